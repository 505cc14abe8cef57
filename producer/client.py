"""Python API: ``Client`` publishes jobs, ``Job`` collects their results.

    client = Client(broker_url="redis://host:6379/0")
    job = client.submit(paths, top_k=5)
    for record in job.results():
        ...

``submit`` writes every path to the job's local manifest (:mod:`producer.manifest`),
seals it, and publishes a first window of chunks; chunk ``i`` is the Celery task
``<job>:<i>`` and its result lands in that task's single result key. Collecting
(:mod:`producer.collector`) publishes the rest as results come back, so Redis holds a
bounded window whatever the job's size, and writes each chunk exactly once.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery
from kombu.utils.url import maybe_sanitize_url

from producer.collector import REDIS_ERRORS, Collector, publish_ahead, socket_timeout
from producer.errors import BackendUnavailable, JobNotFound, JobNotSealed, ManifestMismatch
from producer.jobstore import JobStore
from producer.manifest import LocalManifest, prune
from producer.output import open_writer
from visionq import protocol
from visionq.celeryconf import celery_config, redis_client
from visionq.schema import ErrorType
from visionq.settings import Settings

log = logging.getLogger(__name__)

Record = dict[str, Any]


def producer_config(s: Settings) -> dict[str, Any]:
    """The shared Celery configuration, with publishing bounded by the Redis timeout."""
    conf = celery_config(s)
    timeout = socket_timeout(s)
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
        self.redis = redis_client(
            self.settings.backend_url, **self._redis_options(), health_check_interval=25
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
            except REDIS_ERRORS as exc:
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
        resume: bool = False,
        wait: bool = True,
    ) -> Job:
        """Stage ``paths`` in a new job's manifest and start it.

        Args:
            paths: image paths, consumed lazily and written to the local manifest
                (``VISIONQ_STATE_DIR``), never held in memory.
            top_k: classes per image.
            chunk_size: paths per task; None or 0 sizes chunks from the work left and
                the fleet (recommended).
            queue: queue to publish to (default ``VISIONQ_QUEUE``).
            job_id: the job's id; a new random id when None.
            resume: continue the interrupted submit of ``job_id``: ``paths`` must be
                the same inputs; those already staged are checked and skipped.
            wait: True (the default) publishes a first window of chunks now and the
                rest as results are collected, so Redis holds a bounded window. False
                publishes every chunk now, for collection later (``--no-wait``): Redis
                then holds the whole job until it is collected.

        Returns:
            The sealed :class:`Job`.

        Raises:
            BackendUnavailable: Redis cannot be reached.
            ManifestMismatch: ``resume`` with inputs that differ from the staged ones.
            JobNotFound: ``resume`` of a job this host has no manifest for.
        """
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        if chunk_size is not None and chunk_size < 0:
            raise ValueError("chunk_size must be positive, or 0 for self-sizing")
        # Checked before anything else: a job id names files and Redis patterns.
        job_id = protocol.validate_job_id(job_id or uuid.uuid4().hex)
        self.wait_ready()
        manifest = LocalManifest(self.settings.state_path, job_id)
        store = self._store(job_id)
        if resume:
            if manifest.sealed:
                raise ManifestMismatch(f"job {job_id} was already submitted in full")
        else:
            prune(self.settings.state_path, self.settings.result_expires)
            manifest.create(
                {"job": job_id, "top_k": top_k, "queue": queue or self.settings.queue,
                 "chunk_size": chunk_size or self.settings.chunk_size, "created": time.time(),
                 "host": socket.gethostname(), "state_dir": self.settings.state_path,
                 "run_id": self.server_id()}
            )  # fmt: skip
            self._guarded(store.put_meta, manifest.meta())
        try:
            manifest.stage(paths, resume=resume)
        finally:
            # Counted even when the input fails half-way, so the job can say how far
            # it got; it stays "submitting": resumable or cancellable, never complete.
            manifest.update()
        manifest.seal()
        self._guarded(store.put_meta, manifest.meta())
        job = Job(self, job_id, manifest)
        self._guarded(job.publish, all_chunks=not wait)
        log.info("job %s: %d images on queue %s", job_id, len(job), manifest.meta()["queue"])
        return job

    def job(self, job_id: str) -> Job:
        """Reattach to a job submitted earlier from this host (or this state folder).

        Raises:
            JobNotFound: no manifest here; the message names the host that has it.
            JobNotSealed: the job's submit never finished.
        """
        protocol.validate_job_id(job_id)
        self.wait_ready()
        manifest = LocalManifest(self.settings.state_path, job_id)
        if not manifest.exists():
            meta = self._store(job_id).meta()
            if meta:
                raise JobNotFound(
                    f"job {job_id} was submitted on {meta.get('host', '?')} and its manifest "
                    f"is in {meta.get('state_dir', '?')} there: collect it on that host, or "
                    "point VISIONQ_STATE_DIR at that folder"
                )
            raise JobNotFound(f"job {job_id} is not known here nor in Redis")
        if not manifest.sealed:
            raise JobNotSealed(
                f"job {job_id} was never fully submitted ({manifest.images} paths staged): "
                "resume it with the same inputs and --resume, or cancel it"
            )
        return Job(self, job_id, manifest)

    def cancel(self, job_id: str) -> int:
        """Cancel a job: queued chunks are dropped or skipped, its keys and manifest go.

        Returns the number of queued tasks removed from the broker.
        """
        protocol.validate_job_id(job_id)
        self.wait_ready()
        manifest = LocalManifest(self.settings.state_path, job_id)
        store = self._store(job_id)
        meta = (manifest.meta() if manifest.exists() else None) or store.meta()
        if meta is None:
            raise JobNotFound(f"job {job_id} is not known here nor in Redis")
        broker = redis_client(self.settings.broker_url, **self._redis_options())
        try:
            dropped = self._guarded(store.cancel, meta.get("queue"), broker)
        finally:
            broker.close()
        if manifest.exists():
            manifest.update(state=protocol.CANCELLED)
            manifest.delete()
        log.info("job %s cancelled; %d queued tasks dropped", job_id, dropped)
        return dropped

    def _store(self, job_id: str) -> JobStore:
        return JobStore(self.redis, job_id, self.settings.result_expires)

    def _redis_options(self) -> dict[str, Any]:
        timeout = socket_timeout(self.settings)
        return {"socket_timeout": timeout, "socket_connect_timeout": timeout}

    def _guarded(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except REDIS_ERRORS as exc:
            raise BackendUnavailable(f"Redis failed during {fn.__name__}: {exc}") from exc


@dataclass
class Summary:
    images: int = 0
    ok: int = 0
    failed: int = 0
    resumed: int = 0  # records the output file already held when collection began
    host_failures: int = 0  # images failed because the host or device did, every attempt
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
                etype = r["error"]["type"]
                self.errors[etype] += 1
                if etype in _HOST_ERRORS:
                    self.host_failures += 1


_HOST_ERRORS = frozenset({ErrorType.HOST_FAILURE, ErrorType.CHUNK_FAILED})


class Job:
    """A submitted job. ``len(job)`` is its number of images."""

    def __init__(self, client: Client, job_id: str, manifest: LocalManifest) -> None:
        self.client = client
        self.id = job_id
        self.manifest = manifest

    def __len__(self) -> int:
        return self.manifest.images

    @property
    def n_chunks(self) -> int:
        """Chunks cut so far (chunks are cut as the window allows)."""
        return self.manifest.n_cut

    @property
    def state(self) -> str:
        return str(self.manifest.meta()["state"])

    def __repr__(self) -> str:
        return f"<Job {self.id} images={len(self)} state={self.state}>"

    def publish(self, *, all_chunks: bool = False) -> int:
        """Publish the first window of chunks now (or all of them); return how many."""
        return publish_ahead(self.client, self.manifest, all_chunks=all_chunks)

    # -- results --------------------------------------------------------------------

    def results(self, timeout: float | None = None) -> Iterator[Record]:
        """Per-image records in completion order; each chunk is consumed once."""
        for _, records in self.iter_chunks(timeout=timeout):
            yield from records

    def iter_chunks(
        self, *, timeout: float | None = None, skip: Iterable[int] = ()
    ) -> Iterator[tuple[int, list[Record]]]:
        """(chunk, records) as chunks finish. A chunk counts as delivered, and its
        result is deleted from Redis, once the caller asks for the next one.

        Raises:
            JobBusy: another collector holds the job.
            IncompleteJob: ``timeout`` ran out first.
        """
        return Collector(self.client, self.manifest, timeout=timeout).run(skip)

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
        and only what is missing is appended; without it the file starts empty. A file
        that is damaged or not this job's output is refused and left untouched.
        """
        collector = Collector(self.client, self.manifest, timeout=timeout)
        collector.acquire()  # before the file is touched: a second collector changes nothing
        try:
            with open_writer(out, fresh=not resume) as writer:
                have = (
                    writer.recover(self.manifest.chunk_len, self.id, self.manifest.digest)
                    if resume
                    else set()
                )
                summary = self._deliver(collector.run(have), writer.write_chunk, on_chunk)
        finally:
            collector.release()
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
        return self._deliver(self.iter_chunks(timeout=timeout, skip=skip), sink, on_chunk)

    def _deliver(
        self,
        chunks: Iterator[tuple[int, list[Record]]],
        sink: Callable[[list[Record]], None],
        on_chunk: Callable[[list[Record]], None] | None,
    ) -> Summary:
        start = time.monotonic()
        summary = Summary(images=len(self))
        try:
            for _, records in chunks:
                sink(records)
                summary.add(records)
                if on_chunk:
                    on_chunk(records)
        finally:
            summary.seconds = time.monotonic() - start
        return summary
