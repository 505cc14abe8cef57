"""The worker's error hierarchy."""

from __future__ import annotations


class WorkerError(Exception):
    """Base class for errors raised by visionq workers."""


class WeightsUnavailable(WorkerError):
    """The requested weights cannot be found or loaded."""


class ImageError(WorkerError):
    """One input cannot be classified; ``etype`` is its result's error type."""

    def __init__(self, etype: str, message: str) -> None:
        super().__init__(message)
        self.etype = etype
        self.message = message


class SystemicError(WorkerError):
    """The host, its storage or its device is broken, not the image.

    Raised from reading, fetching or inference, it fails the whole chunk so the chunk is
    retried, possibly on another node, instead of writing one permanent error per image.
    Once a chunk's attempts run out (``VISIONQ_MAX_ATTEMPTS``) the pipeline turns it into
    per-image errors of type ``etype`` (``HostFailure`` unless a more precise one fits).
    """

    def __init__(self, message: str, etype: str = "HostFailure") -> None:
        super().__init__(message)
        self.etype = etype
        self.message = message


class SourceUnavailable(ImageError):
    """A URL could not be fetched after retries: timeouts, 5xx, refused connections.

    ``endpoint_down`` is true when its endpoint answered nothing at all (not even an
    error status) from this image's first failure to its last retry: the endpoint is
    down, not the image.
    """

    def __init__(self, etype: str, message: str, *, endpoint: str, endpoint_down: bool) -> None:
        super().__init__(etype, message)
        self.endpoint = endpoint
        self.endpoint_down = endpoint_down
