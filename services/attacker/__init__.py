"""The attacker domain: targeted attacks (``attacks/``), budgets, delivery, measurements and the
store-backed runner. ``app.py``/``tasks.py`` are thin HTTP/queue layers over it (see docs/attacker.md)."""
