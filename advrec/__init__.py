"""advrec: measure whether robust image feature extractors protect visual recommenders."""

__version__ = "0.1.0"
