"""The producer's error hierarchy."""

from __future__ import annotations


class ProducerError(Exception):
    """Base class for errors raised by the visionq producer."""


class BackendUnavailable(ProducerError):
    """Redis could not be reached within the configured timeout."""


class JobNotFound(ProducerError):
    """No job with this id is known to Redis or to the local state folder."""


class IncompleteJob(ProducerError):
    """Results are still missing when the timeout runs out."""

    def __init__(self, message: str, *, missing: int = 0) -> None:
        super().__init__(message)
        self.missing = missing


class OutputMismatch(ProducerError):
    """The output file to resume holds another job's results."""


class EmbeddedError(ProducerError):
    """The embedded Redis or worker of ``visionq run`` failed."""


class InputError(ProducerError):
    """An input cannot be expanded: a prefix that cannot be listed, a missing extra."""
