"""Python API: ``Client`` publishes jobs, ``Job`` collects their results.

    client = Client(broker_url="redis://host:6379/0")
    job = client.submit(paths, top_k=5)
    for record in job.results():
        ...

A job is cut into chunks; chunk ``i`` is the Celery task ``<job>:<i>`` and its result
lands in that task's single result key. The collector listens on one pattern
subscription for the job (the Redis backend PUBLISHes every result it stores) and
sweeps pending keys with MGET now and then in case a message was missed. It owns the
job: a chunk that failed, or that a Redis restart lost, is re-published; a duplicate
is dropped, because each chunk is written once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url

from producer.errors import BackendUnavailable, IncompleteJob
from producer.inputs import chunked
from producer.manifest import Manifest
from producer.output import open_writer
from visionq import protocol
from visionq.celeryconf import celery_config, redis_client_options
from visionq.redisurl import redis_py_url
from visionq.schema import ErrorType, expand, failed_records
from visionq.settings import Settings

log = logging.getLogger(__name__)

_REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, OperationalError, OSError)
_SWEEP_EVERY = 2.0  # seconds between MGET sweeps of pending result keys
_MGET_BATCH = 1000

Record = dict[str, Any]


def _socket_timeout(s: Settings) -> float:
    # A paused Redis accepts connections and then answers nothing; each call must give
    # up well within VISIONQ_REDIS_TIMEOUT so the retry loops around it stay bounded.
    return max(1.0, min(10.0, s.redis_timeout / 3))


def producer_config(s: Settings) -> dict[str, Any]:
    """The shared Celery configuration, with publishing bounded by the Redis timeout."""
    conf = celery_config(s)
    timeout = _socket_timeout(s)
    conf["broker_transport_options"] = {
        **conf["broker_transport_options"],
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }
    # A publish gives up after ~(retries + 1) socket timeouts plus the intervals: about
    # VISIONQ_REDIS_TIMEOUT, then the caller sees BackendUnavailable.
    conf["task_publish_retry_policy"] = {
        "max_retries": 2,
        "interval_start": 0.5,
        "interval_step": 1.0,
        "interval_max": 2.0,
    }
    return conf


class Client:
    """Connection to a visionq deployment (a Redis broker and result backend)."""

    def __init__(
        self,
        broker_url: str | None = None,
        backend_url: str | None = None,
        *,
        queue: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        base = settings if settings is not None else Settings.from_env()
        self.settings = base.replace(broker_url=broker_url, result_backend=backend_url, queue=queue)
        self.celery = Celery("visionq-producer", set_as_current=False)
        self.celery.conf.update(producer_config(self.settings))
        timeout = _socket_timeout(self.settings)
        self.redis = redis.Redis.from_url(
            redis_py_url(self.settings.backend_url),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=25,
            **redis_client_options(self.settings.backend_url),
        )

    # -- connection -------------------------------------------------------------

    def wait_ready(self, timeout: float | None = None) -> None:
        """Return once Redis answers; raise BackendUnavailable after ``timeout``."""
        limit = self.settings.redis_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            try:
                self.redis.ping()
                return
            except _REDIS_ERRORS as exc:
                if time.monotonic() >= deadline:
                    raise BackendUnavailable(
                        f"cannot reach Redis at {maybe_sanitize_url(self.settings.backend_url)}"
                        f" after {limit:g} s: {exc}"
                    ) from None
                time.sleep(0.5)

    def server_id(self) -> str | None:
        """Redis's run_id: a new value means a restart, which without persistence
        emptied the queue. None where INFO is not allowed (some managed
        Redis services): restarts are then caught by the stall timer only."""
        try:
            return self.redis.info("server").get("run_id")
        except redis.ResponseError:
            return None

    def close(self) -> None:
        self.redis.close()
        self.celery.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs -----------------------------------------------------------------------

    def submit(
        self,
        paths: Iterable[str],
        *,
        top_k: int = 5,
        chunk_size: int | None = None,
        queue: str | None = None,
        job_id: str | None = None,
    ) -> Job:
        """Publish ``paths`` (consumed lazily, held one chunk at a time) as a new job."""
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        size = chunk_size or self.settings.effective_chunk_size
        queue = queue or self.settings.queue
        job_id = protocol.validate_job_id(job_id or uuid.uuid4().hex)
        self.wait_ready()
        manifest = self._manifest(job_id)
        manifest.create(
            {"chunk_size": size, "top_k": top_k, "queue": queue, "created": time.time(),
             "images": 0, "chunks": 0, "state": "submitting", "run_id": self.server_id()}
        )  # fmt: skip
        images = chunks = 0
        try:
            with self.celery.producer_or_acquire() as pub:
                for chunk in chunked(paths, size):
                    manifest.append(chunk)
                    self._publish(job_id, chunks, chunk, top_k, queue, producer=pub)
                    images += len(chunk)
                    chunks += 1
        except _REDIS_ERRORS as exc:
            raise BackendUnavailable(f"publishing job {job_id} failed: {exc}") from exc
        manifest.seal(images=images, chunks=chunks)
        log.info("job %s: %d images in %d chunks on queue %s", job_id, images, chunks, queue)
        return Job(self, job_id, manifest)

    def job(self, job_id: str) -> Job:
        """Reattach to a job submitted earlier, from this or another process."""
        protocol.validate_job_id(job_id)
        self.wait_ready()
        manifest = self._manifest(job_id)
        manifest.meta()  # raises JobNotFound
        return Job(self, job_id, manifest)

    def _manifest(self, job_id: str) -> Manifest:
        return Manifest(
            self.redis, job_id, state_dir=self.settings.state_path, ttl=self.settings.result_expires
        )

    def _publish(
        self, job_id: str, chunk: int, paths: list[str], top_k: int, queue: str,
        producer: Any = None,
    ) -> None:  # fmt: skip
        self.celery.send_task(
            protocol.TASK_NAME,
            args=(job_id, chunk, paths, top_k),
            task_id=protocol.task_id(job_id, chunk),
            queue=queue,
            producer=producer,
        )


@dataclass
class Summary:
    images: int = 0
    ok: int = 0
    failed: int = 0
    resumed: int = 0  # records the output file already held when collection began
    seconds: float = 0.0
    errors: Counter = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return (self.ok + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def add(self, records: Iterable[Record]) -> None:
        for r in records:
            if r["ok"]:
                self.ok += 1
            else:
                self.failed += 1
                self.errors[r["error"]["type"]] += 1


class Job:
    """A submitted job. ``len(job)`` is its number of images."""

    def __init__(self, client: Client, job_id: str, manifest: Manifest) -> None:
        self.client = client
        self.id = job_id
        self.manifest = manifest

    def __len__(self) -> int:
        return int(self.manifest.meta()["images"])

    @property
    def n_chunks(self) -> int:
        return int(self.manifest.meta()["chunks"])

    def __repr__(self) -> str:
        return f"<Job {self.id} images={len(self)} chunks={self.n_chunks}>"

    # -- results ----------------------------------------------------------------

    def results(self, timeout: float | None = None) -> Iterator[Record]:
        """Per-image records in completion order; each chunk is consumed once."""
        for _, records in self.iter_chunks(timeout=timeout):
            yield from records

    def iter_chunks(
        self, *, timeout: float | None = None, skip: Iterable[int] = ()
    ) -> Iterator[tuple[int, list[Record]]]:
        """(chunk, records) as chunks finish. A chunk counts as delivered, and its
        result is deleted from Redis, once the caller asks for the next one."""
        return _Collector(self, timeout=timeout, skip=set(skip)).run()

    def collect(
        self,
        out: str,
        *,
        timeout: float | None = None,
        on_chunk: Callable[[list[Record]], None] | None = None,
        resume: bool = True,
    ) -> Summary:
        """Write results to ``out`` (JSONL, or CSV for *.csv).

        With ``resume`` (the default) a file already holding part of this job is kept
        and only what is missing is appended; without it the file starts empty.
        """
        with open_writer(out, fresh=not resume) as writer:
            have = writer.recover(self.manifest.chunk_len, self.id) if resume else set()
            summary = self.deliver(
                writer.write_chunk, timeout=timeout, on_chunk=on_chunk, skip=have
            )
        summary.resumed = sum(self.manifest.chunk_len(c) for c in have)
        return summary

    def deliver(
        self,
        sink: Callable[[list[Record]], None],
        *,
        timeout: float | None = None,
        on_chunk: Callable[[list[Record]], None] | None = None,
        skip: Iterable[int] = (),
    ) -> Summary:
        """Hand each finished chunk's records to ``sink`` (then ``on_chunk``); count them.

        A chunk counts as delivered once ``sink`` returns, so a sink that raises keeps
        that chunk's result in Redis for the next collection.
        """
        start = time.monotonic()
        summary = Summary(images=len(self))
        try:
            for _, records in self.iter_chunks(timeout=timeout, skip=skip):
                sink(records)
                summary.add(records)
                if on_chunk:
                    on_chunk(records)
        finally:
            summary.seconds = time.monotonic() - start
        return summary


class _Collector:
    """The loop behind :meth:`Job.iter_chunks`.

    Every Redis call sits inside one guarded step of the loop: an outage costs retries
    (up to ``redis_timeout``), never a chunk. Chunks whose re-publish failed are owed
    and published again on the next sweep, so an outage mid-publish loses nothing.
    """

    def __init__(self, job: Job, *, timeout: float | None, skip: set[int]) -> None:
        self.job = job
        self.client = job.client
        self.redis = job.client.redis
        self.settings = job.client.settings
        self.meta = job.manifest.meta()
        self.pending = set(range(int(self.meta["chunks"]))) - skip
        self.skip = skip
        self.deadline = time.monotonic() + timeout if timeout else None
        self.retries: Counter[int] = Counter()
        self.owed: set[int] = set()  # chunks to (re-)publish once Redis takes them
        self.pubsub: Any = None
        # The server the job was published to: a different one at start-up means the
        # queue was lost while nobody was collecting.
        self.run_id: str | None = self.meta.get("run_id")
        self.last_progress = time.monotonic()
        self.stall_wait = self.settings.stall_timeout
        self.offline_since: float | None = None

    def run(self) -> Iterator[tuple[int, list[Record]]]:
        try:
            if self.skip:
                self._ack(self.skip)
            next_sweep = 0.0
            while self.pending:
                self._check_deadline()
                now = time.monotonic()
                ready: list[tuple[int, list[Record]]] = []
                try:
                    messages = self._listen(0.25)
                    if now >= next_sweep:
                        messages += self._sweep()
                        self._check_restart()
                        self._check_stall()
                        self._flush_owed()
                        next_sweep = time.monotonic() + _SWEEP_EVERY
                    # Collected one by one, so chunks decided before an outage strikes
                    # are still handed out below.
                    for chunk, meta in messages:
                        records = self._handle(chunk, meta)
                        if records is not None:
                            ready.append((chunk, records))
                    self.offline_since = None
                except _REDIS_ERRORS as exc:
                    self._offline(exc)
                for chunk, records in ready:
                    yield chunk, records
                    self._ack([chunk])
            self._finish()
        finally:
            self._close_pubsub()

    def _check_deadline(self) -> None:
        if self.deadline and time.monotonic() >= self.deadline:
            raise IncompleteJob(
                f"job {self.job.id}: {len(self.pending)} chunks still missing after the timeout",
                missing=sum(self.job.manifest.chunk_len(c) for c in self.pending),
            )

    # -- Redis I/O --------------------------------------------------------------

    def _connect(self) -> None:
        self._close_pubsub()
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.psubscribe(protocol.result_pattern(self.job.id))
        self.pubsub = pubsub
        if self.run_id is None:
            self.run_id = self.client.server_id()

    def _close_pubsub(self) -> None:
        if self.pubsub is not None:
            with contextlib.suppress(_REDIS_ERRORS):
                self.pubsub.close()
            self.pubsub = None

    def _listen(self, wait: float) -> list[tuple[int, dict[str, Any]]]:
        if self.pubsub is None:
            self._connect()
        out = []
        msg = self.pubsub.get_message(timeout=wait)
        while msg is not None:
            if msg.get("type") == "pmessage":
                _, chunk = protocol.parse_task_id(
                    msg["channel"].decode()[len(protocol.RESULT_KEY_PREFIX) :]
                )
                out.append((chunk, json.loads(msg["data"])))
            msg = self.pubsub.get_message(timeout=0)
        return out

    def _sweep(self) -> list[tuple[int, dict[str, Any]]]:
        out = []
        order = sorted(self.pending)
        for i in range(0, len(order), _MGET_BATCH):
            batch = order[i : i + _MGET_BATCH]
            values = self.redis.mget([protocol.result_key(self.job.id, c) for c in batch])
            out.extend(
                (c, json.loads(v)) for c, v in zip(batch, values, strict=False) if v is not None
            )
        return out

    def _offline(self, exc: Exception) -> None:
        now = time.monotonic()
        self.offline_since = self.offline_since or now
        if now - self.offline_since > self.settings.redis_timeout:
            raise BackendUnavailable(
                f"lost Redis at {maybe_sanitize_url(self.settings.backend_url)} for more "
                f"than {self.settings.redis_timeout:g} s: {exc}"
            ) from None
        log.warning("Redis unreachable (%s); retrying", exc)
        # Subscribe again on the next turn; results published meanwhile are found by
        # the sweep, which the restart check follows.
        self._close_pubsub()
        time.sleep(0.5)

    def _ack(self, chunks: Iterable[int]) -> None:
        """The chunks are in the output: tell workers to skip them, free their results."""
        chunks = list(chunks)
        keys = protocol.JobKeys(self.job.id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(keys.done, *chunks)
        pipe.expire(keys.done, self.settings.result_expires)
        pipe.delete(*(protocol.result_key(self.job.id, c) for c in chunks))
        try:
            pipe.execute()
        except _REDIS_ERRORS as exc:
            # Not fatal: the file already holds them; stray keys expire on their own.
            log.warning("could not mark chunks done: %s", exc)

    # -- decisions ----------------------------------------------------------------

    def _handle(self, chunk: int, meta: dict[str, Any]) -> list[Record] | None:
        if chunk not in self.pending:
            return None  # a duplicate of a chunk already written
        status = meta.get("status")
        result = meta.get("result")
        if status == "SUCCESS" and isinstance(result, dict) and "items" in result:
            self.pending.discard(chunk)
            self.owed.discard(chunk)
            self._progress()
            return list(expand(result, self.job.id))
        if status in ("FAILURE", "REVOKED"):
            reason = result.get("exc_message") if isinstance(result, dict) else result
            return self._retry(chunk, f"{status}: {reason}")
        return None

    def _retry(self, chunk: int, reason: str) -> list[Record] | None:
        paths = self.job.manifest.chunk(chunk)
        # Workers go image by image after max_attempts deliveries and mark one culprit
        # per failed delivery, so this bound lets every image in the chunk be tried.
        limit = self.settings.max_attempts + len(paths) + 1
        # Deleted before the re-publish, so the next sweep cannot mistake this failure
        # for the new delivery's; a failed delete leaves it to be seen (and counted)
        # again, which only brings the bound closer.
        self.redis.delete(protocol.result_key(self.job.id, chunk))
        self.retries[chunk] += 1
        if self.retries[chunk] > limit:
            log.error("chunk %d failed %d times, giving up: %s", chunk, limit, reason)
            self.pending.discard(chunk)
            self.owed.discard(chunk)
            return failed_records(
                paths, self.job.id, chunk, ErrorType.CHUNK_FAILED,
                f"chunk failed {limit} times; last error: {reason}",
            )  # fmt: skip
        log.warning("chunk %d failed (%s); re-publishing", chunk, reason)
        self.owed.add(chunk)
        self._flush_owed()
        return None

    def _flush_owed(self) -> None:
        """Publish the owed chunks; what is not published stays owed."""
        if not self.owed:
            return
        m = self.meta
        with self.client.celery.producer_or_acquire() as pub:
            for chunk in sorted(self.owed & self.pending):
                self.client._publish(
                    self.job.id, chunk, self.job.manifest.chunk(chunk), int(m["top_k"]),
                    m["queue"], producer=pub,
                )  # fmt: skip
                self.owed.discard(chunk)
        self.owed &= self.pending

    def _check_restart(self) -> None:
        run_id = self.client.server_id()
        if run_id == self.run_id:
            return
        # A different server process: without persistence the queue, the manifest and
        # any unread results are gone. Put the manifest back and publish what is missing.
        log.warning("Redis restarted; re-publishing %d pending chunks", len(self.pending))
        self._connect()
        if not self.job.manifest.in_redis():
            self.job.manifest.restore()
        self.owed |= self.pending
        self._flush_owed()
        # Recorded only now: an outage during the steps above repeats them.
        self.run_id = run_id
        self.job.manifest.update(run_id=run_id)
        self._progress()

    def _check_stall(self) -> None:
        if time.monotonic() - self.last_progress < self.stall_wait:
            return
        log.warning(
            "no result for %.0f s; re-publishing %d pending chunks",
            self.stall_wait, len(self.pending),
        )  # fmt: skip
        self.owed |= self.pending
        self._flush_owed()
        self.last_progress = time.monotonic()
        # Each silent period doubles the wait, so workers that are merely all down do
        # not find the queue holding one more copy of every chunk per stall timeout.
        self.stall_wait *= 2

    def _progress(self) -> None:
        self.last_progress = time.monotonic()
        self.stall_wait = self.settings.stall_timeout

    def _finish(self) -> None:
        try:
            n = int(self.meta["chunks"])
            keys = [protocol.result_key(self.job.id, c) for c in range(n)]
            pipe = self.redis.pipeline(transaction=False)
            for i in range(0, len(keys), _MGET_BATCH):
                pipe.delete(*keys[i : i + _MGET_BATCH])
            pipe.execute()
            self.job.manifest.update(state="collected", finished=time.time())
            self.job.manifest.finish()
        except _REDIS_ERRORS as exc:
            log.warning("job %s collected, but cleanup failed: %s", self.job.id, exc)
