"""The worker's error hierarchy."""

from __future__ import annotations

import errno


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


# errnos that say the storage or the network under it is broken, not the file: a
# missing or dead mount (NFS ESTALE, FUSE ENOTCONN), a failing disk (EIO).
SYSTEMIC_ERRNOS = frozenset(
    {
        errno.EIO, errno.ESTALE, errno.ENOTCONN, errno.EHOSTDOWN, errno.EHOSTUNREACH,
        errno.ENETDOWN, errno.ENETUNREACH, errno.ETIMEDOUT, errno.ENOMEDIUM,
        errno.EREMOTEIO, errno.ECONNABORTED,
    }
)  # fmt: skip

# A CUDA error that is not an out-of-memory leaves the context unusable: every later
# call on it fails too, so it is the device that is broken, not the batch.
_DEVICE_FAILURES = ("CUDA error", "CUBLAS_STATUS", "CUDNN_STATUS", "device-side assert",
                    "cudaErrorIllegalAddress", "NVML")  # fmt: skip


def systemic_os_error(exc: BaseException, name: object) -> SystemicError | None:
    """A SystemicError for an OSError whose errno blames the storage, else None."""
    if isinstance(exc, OSError) and exc.errno in SYSTEMIC_ERRNOS:
        return SystemicError(f"reading {name}: {exc.strerror or exc} (errno {exc.errno})")
    return None


def systemic_device_error(exc: BaseException) -> SystemicError | None:
    """A SystemicError for a failure that leaves the device unusable, else None."""
    text = str(exc)
    if "out of memory" in text:
        return None
    if any(mark in text for mark in _DEVICE_FAILURES):
        return SystemicError(f"device failure: {text.splitlines()[0] if text else exc!r}")
    return None
