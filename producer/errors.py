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


class OutputRefused(ProducerError):
    """The output file cannot be written safely; it was left byte-for-byte untouched."""


class OutputMismatch(OutputRefused):
    """The output file to resume holds another job's results."""


class OutputDamaged(OutputRefused):
    """The output file holds visionq records with damage that a crash cannot leave
    (a bad line before the end, a short or repeated chunk before the last one)."""


class OutputForeign(OutputRefused):
    """The output file is not empty and is not visionq output in the expected format."""


class OutputLocked(OutputRefused):
    """Another writer (a second ``collect`` or ``submit``) holds the output file."""


class EmbeddedError(ProducerError):
    """The embedded Redis or worker of ``visionq run`` failed."""


class ManifestMismatch(ProducerError):
    """A manifest or payload does not match the paths the job was submitted with."""


class JobNotSealed(ProducerError):
    """The job's submit never finished: it can be resumed or cancelled, not collected."""


class JobBusy(ProducerError):
    """Another collector holds the job's lease."""


class JobCancelled(ProducerError):
    """The job was cancelled (``visionq cancel``) while it was being collected."""


class InputError(ProducerError):
    """An input cannot be expanded: a prefix that cannot be listed, a missing extra."""
