"""CLI verbs. Each module here defines ``register(subparsers)``; :mod:`advrec.cli` loads them all."""
