"""Names shared by producer and workers: the task, its id and the job keys in Redis.

A job is a sequence of chunks; chunk ``i`` of job ``J`` is always the Celery task with
id ``J:i``. Re-publishing a chunk therefore reuses its id and its single result key,
which is what makes redelivery idempotent.

Per job, Redis holds only what a bounded window of chunks in flight needs: the meta
hash, two bitmaps indexed by chunk number (published, delivered), the workers'
per-chunk bookkeeping for chunks in flight, and the collector's lease. The paths
themselves live in the producer's local manifest and, for chunks in flight, in the
task messages.
"""

from __future__ import annotations

import re

TASK_NAME = "visionq.classify"
RESULT_KEY_PREFIX = "celery-task-meta-"  # Celery's Redis backend key prefix
JOB_PREFIX = "visionq:job:"
WORKER_PREFIX = "visionq:worker:"
CANCELLED_PREFIX = "visionq:cancelled:"

# Job states, in the meta hash's ``state`` field.
SUBMITTING = "submitting"  # the producer is still reading inputs: never complete
SUBMITTED = "submitted"  # every path is in the sealed manifest
COMPLETE = "complete"  # every chunk was delivered to a sink
CANCELLED = "cancelled"


# A job id names a manifest file in the state folder and Redis keys, channel patterns
# (PSUBSCRIBE) and task ids ("JOB:CHUNK"): no path separators, no dots (".."), no glob
# characters, no ':'. Generated ids are uuid4 hex, well inside this.
JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


class InvalidJobId(ValueError):
    """A job id that could escape the state folder or widen a Redis pattern."""


def validate_job_id(job_id: object) -> str:
    """``job_id`` unchanged if it is safe to put in a file name and a Redis pattern
    (1-128 letters, digits, '_' or '-', starting with a letter or digit); else
    :class:`InvalidJobId`."""
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
        raise InvalidJobId(
            f"invalid job id {job_id!r}: use 1-128 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return job_id


def task_id(job_id: str, chunk: int) -> str:
    return f"{job_id}:{chunk}"


def parse_task_id(tid: str) -> tuple[str, int]:
    job_id, _, chunk = tid.rpartition(":")
    return job_id, int(chunk)


def result_key(job_id: str, chunk: int) -> str:
    return RESULT_KEY_PREFIX + task_id(job_id, chunk)


def result_pattern(job_id: str) -> str:
    return f"{RESULT_KEY_PREFIX}{job_id}:*"


def cancelled_key(job_id: str) -> str:
    """A small tombstone that outlives the job's keys, so queued chunks are skipped."""
    return CANCELLED_PREFIX + job_id


class JobKeys:
    """Redis keys of one job, all in the result backend's database."""

    def __init__(self, job_id: str) -> None:
        base = JOB_PREFIX + job_id
        self.meta = base  # hash: sizes, options, state
        self.published = base + ":pub"  # bitmap: chunk was published at least once
        self.done = base + ":done"  # bitmap: chunk is in the current sink (workers skip it)
        self.attempts = base + ":attempts"  # hash: chunk -> deliveries seen by workers
        self.cursor = base + ":cursor"  # hash: chunk -> image index in flight (careful mode)
        self.poison = base + ":poison"  # hash: chunk -> JSON list of culprit indices
        self.owner = base + ":owner"  # string with a TTL: the collector's lease

    def all(self) -> tuple[str, ...]:
        return (self.meta, *self.transient())

    def transient(self) -> tuple[str, ...]:
        """Everything except the meta hash, which stays behind as the job's summary."""
        return (self.published, self.done, self.attempts, self.cursor, self.poison, self.owner)

    def per_chunk(self) -> tuple[str, ...]:
        """Hashes with one field per chunk in flight; a delivered chunk's fields go."""
        return (self.attempts, self.cursor, self.poison)


def worker_key(hostname: str) -> str:
    """Hash of pool child pid -> JSON child record, written by each child."""
    return WORKER_PREFIX + hostname


def bit_offset(chunk: int) -> tuple[int, int]:
    """(byte, mask) of ``chunk`` in a Redis bitmap: SETBIT counts from the top bit."""
    return chunk >> 3, 0x80 >> (chunk & 7)
