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
