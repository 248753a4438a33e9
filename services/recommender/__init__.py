"""Recommender domain: visual recommenders (``models``), BPR training, top-K scoring, the study's metrics.

Kept import-free so ``services.recommender.*`` modules can be imported without a cycle; see
``docs/recommender.md``.
"""
