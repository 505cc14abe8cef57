"""The worker's side of a job's bookkeeping in Redis.

Redis keeps no redelivery count (celery discussion #8969), so each delivery of a chunk increments
its own counter here. Past ``max_attempts`` the chunk runs image by image, recording
which image is in flight; if that image kills or hangs the child, the next delivery
marks it as poison and goes on with the rest.

The ledger is advisory: when Redis cannot be reached the chunk still runs (as a first
attempt, nothing skipped). Failing the chunk instead would only trade a missed poison
count for a lost delivery while Redis restarts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import redis

from visionq.protocol import JobKeys, cancelled_key

log = logging.getLogger(__name__)


@dataclass
class Delivery:
    attempt: int
    done: bool  # delivered to the current sink already, or the job was cancelled
    poison: set[int] = field(default_factory=set)


class Ledger:
    def __init__(self, client: Any, job_id: str, ttl: int) -> None:
        self.client = client
        self.keys = JobKeys(job_id)
        self.cancelled = cancelled_key(job_id)
        self.ttl = ttl

    def begin(self, chunk: int, *, careful_after: int) -> Delivery:
        try:
            return self._begin(chunk, careful_after)
        except redis.RedisError as exc:
            log.warning("chunk %d: ledger unavailable (%s); running it as a first attempt",
                        chunk, exc)  # fmt: skip
            return Delivery(attempt=1, done=False)

    def _begin(self, chunk: int, careful_after: int) -> Delivery:
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.hincrby(k.attempts, chunk, 1)
        pipe.expire(k.attempts, self.ttl)
        pipe.getbit(k.done, chunk)
        pipe.exists(self.cancelled)
        pipe.hget(k.poison, chunk)
        pipe.hget(k.cursor, chunk)
        # A delivery is activity: the job's keys expire only after a quiet period.
        pipe.expire(k.meta, self.ttl)
        pipe.expire(k.done, self.ttl)
        attempt, _, done, cancelled, poison_raw, cursor, *_ = pipe.execute()
        if cancelled:
            return Delivery(int(attempt), True)
        poison = set(json.loads(poison_raw)) if poison_raw else set()
        if attempt > careful_after and cursor is not None:
            # The previous careful delivery died (or hung) on this image.
            culprit = int(cursor)
            poison.add(culprit)
            log.warning("chunk %d: image %d stopped the previous delivery; marking it poison",
                        chunk, culprit)  # fmt: skip
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(k.poison, chunk, json.dumps(sorted(poison)))
            pipe.hdel(k.cursor, chunk)
            pipe.expire(k.poison, self.ttl)
            pipe.execute()
        return Delivery(int(attempt), bool(done), poison)

    def mark_in_flight(self, chunk: int, index: int) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(self.keys.cursor, chunk, index)
            pipe.expire(self.keys.cursor, self.ttl)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("chunk %d: cannot record image %d in flight: %s", chunk, index, exc)

    def finish(self, chunk: int) -> None:
        try:
            self.client.hdel(self.keys.cursor, chunk)
        except redis.RedisError as exc:
            log.warning("chunk %d: cannot clear its in-flight image: %s", chunk, exc)
