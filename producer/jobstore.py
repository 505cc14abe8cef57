"""The Redis side of a job: its meta hash, bitmaps, lease and tombstone.

Everything here is small and bounded: the meta hash has a dozen fields, the bitmaps
one bit per chunk, and the per-chunk hashes only hold chunks in flight. Keys live
while the job is active (each collector sweep and each worker delivery refreshes
them) and expire after ``VISIONQ_RESULT_EXPIRES`` of inactivity.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterable
from typing import Any

import redis

from producer.errors import JobBusy
from producer.inputs import chunked
from visionq import protocol

# Long enough to ride out a few missed renewals, short enough that a collector that
# died frees the job before a user retrying by hand gets impatient.
LEASE_MS = 15_000

# Renew only our own lease: a lease that expired and was taken by another collector
# must not be extended by the old owner.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class JobStore:
    """Redis records of job ``job_id``; ``ttl`` is the inactivity expiry in seconds."""

    def __init__(self, client: redis.Redis, job_id: str, ttl: int) -> None:
        self.redis = client
        self.job_id = job_id
        self.keys = protocol.JobKeys(job_id)
        self.ttl = ttl
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # -- meta -------------------------------------------------------------------------

    def put_meta(self, meta: dict[str, Any]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self._write_meta(pipe, meta)
        pipe.execute()

    def _write_meta(self, pipe: Any, meta: dict[str, Any]) -> None:
        pipe.hset(self.keys.meta, mapping={k: json.dumps(v) for k, v in meta.items()})
        pipe.expire(self.keys.meta, self.ttl)

    def meta(self) -> dict[str, Any] | None:
        raw = self.redis.hgetall(self.keys.meta)
        return {k.decode(): json.loads(v) for k, v in raw.items()} if raw else None

    def cancelled(self) -> bool:
        return bool(self.redis.exists(protocol.cancelled_key(self.job_id)))

    def touch(self) -> None:
        """Keep the job's keys alive while it is active."""
        pipe = self.redis.pipeline(transaction=False)
        for key in self.keys.all():
            if key != self.keys.owner:
                pipe.expire(key, self.ttl)
        pipe.execute()

    # -- lease ------------------------------------------------------------------------

    def acquire(self) -> None:
        """Become the job's only collector, or raise JobBusy naming the holder."""
        if self.redis.set(self.keys.owner, self.token, nx=True, px=LEASE_MS):
            return
        raw = self.redis.get(self.keys.owner)
        holder = raw.decode() if raw is not None else ""
        if holder == self.token:
            return
        # A collector on this host that was killed: its lease would only make the user
        # wait out its TTL. Take it over, unless someone else just did (GET in the SET).
        if (
            holder
            and _dead_here(holder)
            and self.redis.set(self.keys.owner, self.token, xx=True, px=LEASE_MS, get=True) == raw
        ):
            return
        raise JobBusy(
            f"job {self.job_id} is being collected by {holder or '?'} (host:pid); wait for "
            f"it to finish, or stop it (a collector that died frees the job within "
            f"{LEASE_MS // 1000} s)"
        )

    def renew(self) -> bool:
        """Extend the lease; False if it was lost (expired and taken, or Redis restarted)."""
        if self.redis.eval(_RENEW, 1, self.keys.owner, self.token, LEASE_MS):
            return True
        # Lost without a new holder (a Redis restart emptied it): take it back.
        return bool(self.redis.set(self.keys.owner, self.token, nx=True, px=LEASE_MS))

    def release(self) -> None:
        self.redis.eval(_RELEASE, 1, self.keys.owner, self.token)

    # -- bitmaps ----------------------------------------------------------------------

    def bitmap(self, key: str) -> bytes:
        return self.redis.get(key) or b""

    def set_bitmap(self, key: str, bits: bytes | bytearray) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(key)
        if any(bits):
            pipe.set(key, bytes(bits), ex=self.ttl)
        pipe.execute()

    def mark_published(self, chunks: Iterable[int]) -> None:
        """These chunks' tasks are on the queue: a collector attaching later waits for them."""
        pipe = self.redis.pipeline(transaction=False)
        for c in chunks:
            pipe.setbit(self.keys.published, c, 1)
        pipe.expire(self.keys.published, self.ttl)
        pipe.execute()

    def mark_delivered(self, chunks: Iterable[int]) -> None:
        """Workers skip these chunks from now on; their results and ledger entries go."""
        chunks = list(chunks)
        if not chunks:
            return
        pipe = self.redis.pipeline(transaction=False)
        for c in chunks:
            pipe.setbit(self.keys.done, c, 1)
        for key in self.keys.per_chunk():
            pipe.hdel(key, *chunks)
        pipe.delete(*(protocol.result_key(self.job_id, c) for c in chunks))
        pipe.execute()

    # -- end of life ------------------------------------------------------------------

    def finish(self, meta: dict[str, Any]) -> None:
        """Keep only the meta hash, as the job's summary, until it expires."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(*self.keys.transient())
        self._write_meta(pipe, meta)
        pipe.execute()

    def cancel(self, queue: str | None, broker: redis.Redis | None) -> int:
        """Tombstone the job, drop its queued tasks and its keys; return tasks dropped."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(protocol.cancelled_key(self.job_id), 1, ex=self.ttl)
        pipe.delete(*self.keys.all())
        pipe.execute()
        for keys in chunked(self.redis.scan_iter(protocol.result_pattern(self.job_id), 1000), 1000):
            self.redis.delete(*keys)
        return drop_queued(broker, queue, self.job_id) if broker is not None and queue else 0


def _dead_here(holder: str) -> bool:
    """True when ``holder`` (host:pid:nonce) is a process of this host that is gone."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def drop_queued(broker: redis.Redis, queue: str, job_id: str) -> int:
    """Remove the job's tasks still waiting in ``queue`` (kombu keeps a Redis list).

    The window keeps that list short while a collector is attached; tasks already
    taken by a worker are skipped there through the tombstone.
    """
    prefix = f"{job_id}:"
    dropped = 0
    for raw in broker.lrange(queue, 0, -1):
        try:
            tid = json.loads(raw)["headers"]["id"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(tid, str) and tid.startswith(prefix):
            dropped += int(broker.lrem(queue, 1, raw))
    return dropped
