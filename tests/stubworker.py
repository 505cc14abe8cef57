"""A stand-in for a worker that speaks the real wire formats, for collector tests.

It pops task messages from the real Redis broker list (kombu's format), and stores
results the way Celery's Redis backend does (SET the result key, PUBLISH it on the
channel of the same name). The model is not involved: each image gets a result whose
label is derived from its path, so the tests can check every record. Nothing here is a
mock of Redis: the collector under test talks to a real server.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import redis

from visionq import protocol
from visionq.schema import make_payload

Payload = dict[str, Any]
Answer = Callable[[str, int, list[str]], tuple[str, Any]]


def label_of(path: str) -> str:
    return f"label-{len(path) % 7}"


class StubWorker:
    def __init__(self, broker: redis.Redis, backend: redis.Redis, queue: str = "visionq"):
        self.broker = broker
        self.backend = backend
        self.queue = queue
        self.seen: list[tuple[str, int, list[str]]] = []  # (job, chunk, paths) per task

    def pop(self) -> tuple[str, str, int, list[str], int] | None:
        """(task id, job, chunk, paths, top_k) of the next queued task, or None."""
        raw = self.broker.rpop(self.queue)
        if raw is None:
            return None
        msg = json.loads(raw)
        body = msg["body"]
        if msg["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, _kwargs, _embed = json.loads(body)
        job, chunk, paths, top_k = args
        self.seen.append((job, chunk, paths))
        return msg["headers"]["id"], job, chunk, paths, top_k

    def payload(self, chunk: int, paths: list[str], ms: float = 5.0) -> Payload:
        items = [[p, [[0, label_of(p), 1.0]], None, None, 0.1, 0.1] for p in paths]
        return make_payload(chunk=chunk, items=items, worker="stub", device="cpu",
                            weights="stub", precision="fp32", ms=ms)  # fmt: skip

    def store(self, task_id: str, status: str, result: Any) -> None:
        meta = json.dumps({"status": status, "result": result, "task_id": task_id,
                           "traceback": None, "children": [], "date_done": None})  # fmt: skip
        key = protocol.RESULT_KEY_PREFIX + task_id
        self.backend.set(key, meta, ex=3600)
        self.backend.publish(key, meta)

    def serve(self, n: int = 1_000_000, answer: Answer | None = None) -> int:
        """Answer up to ``n`` queued tasks; ``answer`` may replace the normal result."""
        done = 0
        while done < n and (task := self.pop()) is not None:
            tid, job, chunk, paths, _k = task
            if self.backend.exists(protocol.cancelled_key(job)):
                continue  # as the real worker's ledger does
            status, result = (answer or (lambda t, c, p: ("SUCCESS", self.payload(c, p))))(
                tid, chunk, paths
            )
            if status:
                self.store(tid, status, result)
            done += 1
        return done
