"""The worker's side of a job's bookkeeping in Redis.

Redis keeps no redelivery count (NOTES §3), so each delivery of a chunk increments
its own counter here. Past ``max_attempts`` the chunk runs image by image, recording
which image is in flight; if that image kills or hangs the child, the next delivery
marks it as poison and goes on with the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from visionq.protocol import JobKeys


@dataclass
class Delivery:
    attempt: int
    done: bool
    poison: set[int] = field(default_factory=set)


class Ledger:
    def __init__(self, client: Any, job_id: str, ttl: int) -> None:
        self.client = client
        self.keys = JobKeys(job_id)
        self.ttl = ttl

    def begin(self, chunk: int, *, careful_after: int) -> Delivery:
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.hincrby(k.attempts, chunk, 1)
        pipe.expire(k.attempts, self.ttl)
        pipe.sismember(k.done, chunk)
        pipe.hget(k.poison, chunk)
        pipe.hget(k.cursor, chunk)
        attempt, _, done, poison_raw, cursor = pipe.execute()
        poison = set(json.loads(poison_raw)) if poison_raw else set()
        if attempt > careful_after and cursor is not None:
            # The previous careful delivery died on this image.
            poison.add(int(cursor))
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(k.poison, chunk, json.dumps(sorted(poison)))
            pipe.hdel(k.cursor, chunk)
            pipe.expire(k.poison, self.ttl)
            pipe.execute()
        return Delivery(int(attempt), bool(done), poison)

    def mark_in_flight(self, chunk: int, index: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.keys.cursor, chunk, index)
        pipe.expire(self.keys.cursor, self.ttl)
        pipe.execute()

    def finish(self, chunk: int) -> None:
        self.client.hdel(self.keys.cursor, chunk)
