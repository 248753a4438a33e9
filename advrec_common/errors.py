"""Typed domain errors; each app maps them to an HTTP status in one place."""


class AdvrecError(Exception):
    """Base class of every error advrec raises on purpose."""

    status_code = 400


class InvalidInput(AdvrecError, ValueError):
    """Bad parameters, shapes or values (HTTP 422)."""

    status_code = 422


class NotFound(AdvrecError, KeyError):
    """Unknown id: user, item, dataset, job, weight name (HTTP 404)."""

    status_code = 404

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "not found"


class BadImage(InvalidInput):
    """An image that cannot be decoded, or is too large."""


class BadCheckpoint(InvalidInput):
    """A checkpoint file of the wrong layout, with missing/unexpected keys, or not a checkpoint."""


class MissingWeights(NotFound):
    """A named pretrained weight that is not on disk."""
