"""A job's manifest: its options and the paths of every chunk.

Kept twice, on purpose. In Redis, so a producer on any host can reattach to a job and
re-publish its chunks. In a local file under the state folder, so a job survives a
Redis restart without persistence: the producer puts it back into Redis.
"""

from __future__ import annotations

import contextlib
import json
import os
from array import array
from typing import Any

from producer.errors import JobNotFound
from visionq.protocol import JobKeys

_FLUSH_EVERY = 256  # chunks per pipelined round trip


class Manifest:
    def __init__(self, redis: Any, job_id: str, *, state_dir: str, ttl: int) -> None:
        self.redis = redis
        self.job_id = job_id
        self.keys = JobKeys(job_id)
        self.ttl = ttl
        folder = os.path.join(state_dir, "jobs")
        self.meta_path = os.path.join(folder, f"{job_id}.json")
        self.chunks_path = os.path.join(folder, f"{job_id}.chunks.jsonl")
        self._meta: dict[str, Any] | None = None
        self._offsets: array | None = None
        self._pipe: Any = None
        self._pending = 0
        self._local: Any = None

    # -- writing ----------------------------------------------------------------

    def create(self, meta: dict[str, Any]) -> None:
        os.makedirs(os.path.dirname(self.meta_path), exist_ok=True)
        self._meta = dict(meta)
        self._write_local_meta()
        self.redis.hset(self.keys.meta, mapping=_flat(self._meta))
        self.redis.expire(self.keys.meta, self.ttl)
        self._local = open(self.chunks_path, "w", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
        self._pipe = self.redis.pipeline(transaction=False)

    def append(self, paths: list[str]) -> None:
        # A name that is not UTF-8 holds lone surrogates, which redis-py cannot encode
        # (the whole pipeline then fails, after its tasks were published): write them
        # as JSON escapes (\udcXX), which json.loads turns back into the same str.
        line = json.dumps(paths, ensure_ascii=False).encode("utf-8", "backslashreplace").decode()
        self._local.write(line + "\n")
        self._pipe.rpush(self.keys.chunks, line)
        self._pending += 1
        if self._pending >= _FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._pipe.expire(self.keys.chunks, self.ttl)
            self._pipe.execute()
            self._pending = 0

    def seal(self, *, images: int, chunks: int) -> None:
        self._flush()
        self._local.close()
        assert self._meta is not None
        self._meta.update(images=images, chunks=chunks, state="submitted")
        self._write_local_meta()
        self.redis.hset(self.keys.meta, mapping=_flat(self._meta))

    def _write_local_meta(self) -> None:
        tmp = self.meta_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self._meta, fh)
        os.replace(tmp, self.meta_path)

    # -- reading ----------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            raw = self.redis.hgetall(self.keys.meta)
            if raw:
                self._meta = {k.decode(): json.loads(v) for k, v in raw.items()}
            elif os.path.exists(self.meta_path):
                with open(self.meta_path, encoding="utf-8") as fh:
                    self._meta = json.load(fh)
            else:
                raise JobNotFound(f"job {self.job_id} is not in Redis nor in the state folder")
        return self._meta

    def chunk_size(self) -> int:
        return int(self.meta()["chunk_size"])

    def chunk_len(self, i: int) -> int:
        m = self.meta()
        size, n_chunks, images = int(m["chunk_size"]), int(m["chunks"]), int(m["images"])
        return size if i < n_chunks - 1 else images - size * (n_chunks - 1)

    def chunk(self, i: int) -> list[str]:
        raw = self.redis.lindex(self.keys.chunks, i)
        if raw is None:
            raw = self._local_line(i)
        return json.loads(raw)

    def _local_line(self, i: int) -> str:
        if not os.path.exists(self.chunks_path):
            raise JobNotFound(f"chunk {i} of job {self.job_id} is lost: no manifest left")
        if self._offsets is None:
            self._offsets = array("q")
            pos = 0
            with open(self.chunks_path, "rb") as fh:
                for line in fh:
                    self._offsets.append(pos)
                    pos += len(line)
        with open(self.chunks_path, "rb") as fh:
            fh.seek(self._offsets[i])
            return fh.readline().decode("utf-8", "surrogateescape")

    def in_redis(self) -> bool:
        return bool(self.redis.exists(self.keys.meta))

    def restore(self) -> None:
        """Put the manifest back into Redis from the local copy (after a Redis restart)."""
        meta = self.meta()
        self.redis.hset(self.keys.meta, mapping=_flat(meta))
        self.redis.expire(self.keys.meta, self.ttl)
        if os.path.exists(self.chunks_path) and not self.redis.exists(self.keys.chunks):
            pipe = self.redis.pipeline(transaction=False)
            with open(self.chunks_path, encoding="utf-8", errors="surrogateescape") as fh:
                for n, line in enumerate(fh, 1):
                    pipe.rpush(self.keys.chunks, line.rstrip("\n"))
                    if n % _FLUSH_EVERY == 0:
                        pipe.execute()
            pipe.expire(self.keys.chunks, self.ttl)
            pipe.execute()

    def update(self, **fields: Any) -> None:
        self.meta().update(fields)
        self.redis.hset(self.keys.meta, mapping=_flat(fields))
        self._write_local_meta()

    def finish(self) -> None:
        """Drop the bulky keys; the meta hash stays as a summary until it expires."""
        self.redis.delete(*self.keys.transient())
        for path in (self.chunks_path,):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def _flat(meta: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v) for k, v in meta.items()}
