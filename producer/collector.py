"""The collector: the one loop that owns a job while it runs.

It publishes chunks as the window allows, listens for their results, checks each
payload against the manifest, hands the records to the sink in chunk units and only
then marks the chunk delivered. It holds the job's lease while it runs, so a second
collector is refused rather than writing the same lines again.

Every Redis call sits inside one guarded step of the loop: an outage costs retries
(up to ``redis_timeout``), never a chunk. What it keeps in memory is bounded by the
window, plus one bit per chunk; the paths stay on disk in the manifest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import redis
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url

from producer.errors import BackendUnavailable, IncompleteJob, JobCancelled
from producer.jobstore import JobStore
from producer.manifest import LocalManifest
from producer.sizing import Fleet, Sizer
from visionq import protocol
from visionq.chunks import ChunkEntry, checksum
from visionq.records import ChildRecord
from visionq.schema import ErrorType, expand, failed_records
from visionq.settings import Settings

if TYPE_CHECKING:
    from producer.client import Client

log = logging.getLogger(__name__)

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, OperationalError, OSError)
# The pattern subscription normally brings every result at once, but a subscriber can
# miss messages (a reconnect; large results over a unix socket were seen to arrive late
# or not at all), so results in flight are also read with MGET: the window is small,
# and a chunk found this way is not fetched twice.
_SWEEP_EVERY = 0.5
_HOUSEKEEPING_EVERY = 2.0  # seconds between lease renewals, restart and stall checks
_FLEET_EVERY = 5.0  # seconds between registry reads
_MGET_BATCH = 500
# A failed chunk waits before it is published again, doubling per failure: a mount or a
# node that is down for a few seconds must not burn every attempt in a few milliseconds.
_RETRY_BASE_S = 1.0
_RETRY_MAX_S = 30.0

Record = dict[str, Any]


class Bits:
    """A growable bitmap in Redis's bit order, so it can be stored with one SET."""

    def __init__(self, raw: bytes = b"") -> None:
        self.data = bytearray(raw)

    def __contains__(self, i: int) -> bool:
        byte, mask = protocol.bit_offset(i)
        return byte < len(self.data) and bool(self.data[byte] & mask)

    def add(self, i: int) -> None:
        byte, mask = protocol.bit_offset(i)
        if byte >= len(self.data):
            self.data.extend(bytes(byte + 1 - len(self.data)))
        self.data[byte] |= mask


def socket_timeout(settings: Settings) -> float:
    """How long one producer call to Redis may take before it counts as failed."""
    # A paused Redis accepts connections and then answers nothing; each call must give
    # up well within VISIONQ_REDIS_TIMEOUT so the retry loops around it stay bounded.
    return max(1.0, min(10.0, settings.redis_timeout / 3))


def read_fleet(client: redis.Redis) -> Fleet | None:
    """Children and their usual batch size, from the workers' registry records."""
    records = []
    for key in client.scan_iter(protocol.WORKER_PREFIX + "*", 100):
        for raw in client.hvals(key):
            with contextlib.suppress(ValueError, TypeError):
                records.append(ChildRecord.from_json(raw))
    live = [r for r in records if r.fresh()]
    if not live:
        return None
    batches = sorted(r.batch_size for r in live)
    return Fleet(children=len(live), batch=batches[len(batches) // 2])


class Publisher:
    """Cuts chunks from the manifest and publishes them; remembers what it published."""

    def __init__(self, client: Client, manifest: LocalManifest, store: JobStore, sizer: Sizer):
        self.client = client
        self.manifest = manifest
        self.store = store
        self.sizer = sizer
        meta = manifest.meta()
        self.top_k = int(meta["top_k"])
        self.queue = str(meta["queue"])

    def next_entry(self) -> ChunkEntry | None:
        size = self.sizer.next_size(self.manifest.remaining)
        return self.manifest.cut(size) if size else None

    def publish(self, entries: Iterable[ChunkEntry]) -> list[int]:
        """Send each entry's task; return their chunk numbers once all are out."""
        sent = []
        with self.client.celery.producer_or_acquire() as pub:
            for entry in entries:
                self.client.celery.send_task(
                    protocol.TASK_NAME,
                    args=entry.task_args(self.top_k),
                    task_id=protocol.task_id(entry.job, entry.chunk),
                    queue=self.queue,
                    producer=pub,
                )
                sent.append(entry.chunk)
        if sent:
            self.store.mark_published(sent)
        return sent

    def publish_all(self) -> int:
        """Cut and publish every remaining chunk (``--no-wait``); return how many."""
        n = 0
        while (entry := self.next_entry()) is not None:
            self.publish([entry])
            n += 1
        self.manifest.sync()
        return n


def _sizer(client: Client, manifest: LocalManifest) -> Sizer:
    s = client.settings
    return Sizer(
        fixed=int(manifest.meta().get("chunk_size") or 0),
        chunk_seconds=s.chunk_seconds,
        window=s.window,
    )


def publish_ahead(client: Client, manifest: LocalManifest, *, all_chunks: bool) -> int:
    """Publish a first window of chunks (or every chunk); return how many.

    A first window starts the workers before anybody collects; ``all_chunks`` is the
    ``--no-wait`` form, where no collector will be there to publish the rest.
    """
    store = JobStore(client.redis, manifest.job_id, client.settings.result_expires)
    sizer = _sizer(client, manifest)
    sizer.fleet = read_fleet(client.redis) or sizer.fleet
    publisher = Publisher(client, manifest, store, sizer)
    if all_chunks:
        return publisher.publish_all()
    entries = []
    for _ in range(sizer.window()):
        entry = publisher.next_entry()
        if entry is None:
            break
        entries.append(entry)
    manifest.sync()
    return len(publisher.publish(entries))


class Collector:
    """Owns job delivery; :meth:`run` yields ``(chunk, records)`` as chunks finish.

    A chunk counts as delivered, and its result is deleted from Redis, once the caller
    asks for the next one. Call :meth:`acquire` before touching the sink, so a second
    collector is refused before it changes anything.
    """

    def __init__(self, client: Client, manifest: LocalManifest, *, timeout: float | None) -> None:
        self.client = client
        self.settings = client.settings
        self.redis = client.redis
        self.manifest = manifest
        self.job_id = manifest.job_id
        self.store = JobStore(client.redis, self.job_id, self.settings.result_expires)
        self.sizer = _sizer(client, manifest)
        self.publisher = Publisher(client, manifest, self.store, self.sizer)
        self.deadline = time.monotonic() + timeout if timeout else None
        self.delivered = Bits()
        self.inflight: set[int] = set()
        self.todo: deque[int] = deque()  # cut, not in this sink, not in flight: publish
        self.owed: set[int] = set()  # to re-publish once Redis takes them
        self.not_before: dict[int, float] = {}  # failed chunks backing off
        self.retries: Counter[int] = Counter()
        self.pubsub: Any = None
        self.run_id: str | None = manifest.meta().get("run_id")
        self.last_progress = time.monotonic()
        self.stall_wait = self.settings.stall_timeout
        self.offline_since: float | None = None
        self.next_fleet = 0.0

    # -- the loop ---------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the job's lease, or raise JobBusy naming who holds it."""
        self.store.acquire()

    def run(self, have: Iterable[int] = ()) -> Iterator[tuple[int, list[Record]]]:
        """Deliver every chunk except ``have`` (those the sink already holds)."""
        self.store.acquire()
        try:
            self._attach(have)
            next_sweep = next_housekeeping = 0.0
            while not self._finished():
                self._check_deadline()
                ready: list[tuple[int, list[Record]]] = []
                try:
                    self._refill()
                    self._flush_owed()
                    messages = self._listen(0.25)
                    now = time.monotonic()
                    if now >= next_sweep:
                        messages += self._sweep(skip={c for c, _ in messages})
                        next_sweep = now + _SWEEP_EVERY
                    if now >= next_housekeeping:
                        self._housekeeping()
                        next_housekeeping = now + _HOUSEKEEPING_EVERY
                    for chunk, meta in messages:
                        records = self._handle(chunk, meta)
                        if records is not None:
                            ready.append((chunk, records))
                    self.offline_since = None
                except REDIS_ERRORS as exc:
                    self._offline(exc)
                for chunk, records in ready:
                    yield chunk, records
                    self._delivered(chunk)
            self._complete()
        finally:
            self._close_pubsub()
            self.manifest.sync()
            self.release()

    def release(self) -> None:
        """Give the lease back (a no-op when another collector holds it)."""
        with contextlib.suppress(*REDIS_ERRORS):
            self.store.release()

    def _finished(self) -> bool:
        return not self.inflight and not self.todo and not self.owed and not self.manifest.remaining

    def _attach(self, have: Iterable[int]) -> None:
        """Work out what is in flight, what to (re-)run, and tell workers what to skip."""
        published = Bits(self.store.bitmap(self.store.keys.published))
        done_elsewhere = Bits(self.store.bitmap(self.store.keys.done))
        for c in have:
            self.delivered.add(c)
        for c in range(self.manifest.n_cut):
            if c in self.delivered:
                continue
            if c in published and c not in done_elsewhere:
                self.inflight.add(c)  # queued or running: wait for it
            else:
                # Never published, or delivered to another sink: run it again for this one.
                self.todo.append(c)
        self.store.set_bitmap(self.store.keys.done, self.delivered.data)
        self._refresh_fleet()

    def _refill(self) -> None:
        room = self.sizer.window() - len(self.inflight)
        if room <= 0:
            return
        entries: list[ChunkEntry] = []
        while room > 0 and self.todo:
            entries.append(self.manifest.entry(self.todo.popleft()))
            room -= 1
        while room > 0 and (entry := self.publisher.next_entry()) is not None:
            entries.append(entry)
            room -= 1
        if not entries:
            return
        # In flight before publishing: an outage mid-publish leaves them owed, not lost.
        for e in entries:
            self.inflight.add(e.chunk)
            self.owed.add(e.chunk)
        self.owed -= set(self.publisher.publish(entries))

    def _check_deadline(self) -> None:
        if self.deadline and time.monotonic() >= self.deadline:
            missing = self.manifest.images - sum(
                self.manifest.chunk_len(c)
                for c in range(self.manifest.n_cut)
                if c in self.delivered
            )
            raise IncompleteJob(
                f"job {self.job_id}: {missing} images still missing after the timeout",
                missing=missing,
            )

    # -- Redis I/O --------------------------------------------------------------------

    def _connect(self) -> None:
        self._close_pubsub()
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.psubscribe(protocol.result_pattern(self.job_id))
        self.pubsub = pubsub
        if self.run_id is None:
            self.run_id = self.client.server_id()

    def _close_pubsub(self) -> None:
        if self.pubsub is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                self.pubsub.close()
            self.pubsub = None

    def _listen(self, wait: float) -> list[tuple[int, dict[str, Any]]]:
        if self.pubsub is None:
            self._connect()
        out: list[tuple[int, dict[str, Any]]] = []
        # Wait for the first byte, then read whole messages with the socket's timeout:
        # redis-py applies get_message's timeout to the read itself, and a result of
        # a few MB does not always arrive within it (over a unix socket it often did
        # not), which broke the subscription mid-message.
        conn = self.pubsub.connection
        if conn is None or not conn.can_read(timeout=wait):
            return out
        read_timeout = socket_timeout(self.settings)
        while True:
            msg = self.pubsub.get_message(timeout=read_timeout)
            if msg is not None and msg.get("type") == "pmessage":
                _, chunk = protocol.parse_task_id(
                    msg["channel"].decode()[len(protocol.RESULT_KEY_PREFIX) :]
                )
                out.append((chunk, json.loads(msg["data"])))
            if not conn.can_read(timeout=0):
                return out

    def _sweep(self, skip: set[int]) -> list[tuple[int, dict[str, Any]]]:
        out = []
        order = sorted(self.inflight - skip)
        for i in range(0, len(order), _MGET_BATCH):
            batch = order[i : i + _MGET_BATCH]
            values = self.redis.mget([protocol.result_key(self.job_id, c) for c in batch])
            out.extend((c, json.loads(v)) for c, v in zip(batch, values, strict=True) if v)
        return out

    def _housekeeping(self) -> None:
        if self.store.cancelled():
            raise JobCancelled(f"job {self.job_id} was cancelled")
        if not self.store.renew():
            raise BackendUnavailable(f"lost the lease on job {self.job_id} to another collector")
        self.store.touch()
        self._check_restart()
        self._check_stall()
        self._flush_owed()
        if time.monotonic() >= self.next_fleet:
            self._refresh_fleet()

    def _refresh_fleet(self) -> None:
        self.next_fleet = time.monotonic() + _FLEET_EVERY
        fleet = read_fleet(self.redis)
        if fleet is not None:
            self.sizer.fleet = fleet

    def _offline(self, exc: Exception) -> None:
        now = time.monotonic()
        self.offline_since = self.offline_since or now
        if now - self.offline_since > self.settings.redis_timeout:
            raise BackendUnavailable(
                f"lost Redis at {maybe_sanitize_url(self.settings.backend_url)} for more "
                f"than {self.settings.redis_timeout:g} s: {exc}"
            ) from None
        log.warning("Redis unreachable (%s); retrying", exc)
        # Subscribe again next turn; results published meanwhile are found by the sweep.
        self._close_pubsub()
        time.sleep(0.5)

    def _delivered(self, chunk: int) -> None:
        """The chunk is in the sink: tell workers to skip it, free its keys."""
        self.delivered.add(chunk)
        try:
            self.store.mark_delivered([chunk])
        except REDIS_ERRORS as exc:
            # Not fatal: the sink holds it; stray keys expire on their own.
            log.warning("could not mark chunk %d delivered: %s", chunk, exc)

    # -- decisions --------------------------------------------------------------------

    def _handle(self, chunk: int, meta: dict[str, Any]) -> list[Record] | None:
        if chunk not in self.inflight:
            if chunk not in self.todo:
                return None  # a duplicate, or a result from a cut that a crash undid
            self.todo.remove(chunk)  # a result left from before this collector attached
            self.inflight.add(chunk)
        status = meta.get("status")
        result = meta.get("result")
        if status == "SUCCESS" and isinstance(result, dict) and "items" in result:
            paths = [item[0] for item in result["items"]]
            digest = self.manifest.digest(chunk)
            if len(paths) != self.manifest.chunk_len(chunk) or checksum(paths) != digest:
                log.error("chunk %d: payload paths do not match the manifest; re-running it",
                          chunk)  # fmt: skip
                return self._retry(chunk, "payload does not match the manifest")
            self.inflight.discard(chunk)
            self.owed.discard(chunk)
            with contextlib.suppress(ValueError, TypeError):
                self.sizer.observe(len(paths), float(result.get("ms", 0)) / 1000)
            self._progress()
            return list(expand(result, self.job_id))
        if status in ("FAILURE", "REVOKED"):
            reason = result.get("exc_message") if isinstance(result, dict) else result
            return self._retry(chunk, f"{status}: {reason}")
        return None

    def _retry(self, chunk: int, reason: str) -> list[Record] | None:
        n = self.manifest.chunk_len(chunk)
        # Workers go image by image after max_attempts deliveries and mark one culprit
        # per failed delivery, so this bound lets every image in the chunk be tried.
        limit = self.settings.max_attempts + n + 1
        # Deleted before the re-publish, so the next sweep cannot mistake this failure
        # for the new delivery's.
        self.redis.delete(protocol.result_key(self.job_id, chunk))
        self.retries[chunk] += 1
        if self.retries[chunk] > limit:
            log.error("chunk %d failed %d times, giving up: %s", chunk, limit, reason)
            self.inflight.discard(chunk)
            self.owed.discard(chunk)
            return failed_records(
                self.manifest.entry(chunk).paths, self.job_id, chunk, ErrorType.CHUNK_FAILED,
                f"chunk failed {limit} times; last error: {reason}",
            )  # fmt: skip
        delay = min(_RETRY_MAX_S, _RETRY_BASE_S * 2 ** (self.retries[chunk] - 1))
        log.warning("chunk %d failed (%s); re-publishing in %.0f s", chunk, reason, delay)
        self.inflight.add(chunk)
        self.owed.add(chunk)
        self.not_before[chunk] = time.monotonic() + delay
        return None

    def _flush_owed(self) -> None:
        """Publish the owed chunks that are due; what is not published stays owed."""
        if not self.owed:
            return
        now = time.monotonic()
        due = sorted(c for c in self.owed if self.not_before.get(c, 0.0) <= now)
        if not due:
            return
        entries = [self.manifest.entry(c) for c in due]
        sent = set(self.publisher.publish(entries))
        self.owed -= sent
        for c in sent:
            self.not_before.pop(c, None)

    def _check_restart(self) -> None:
        run_id = self.client.server_id()
        if run_id == self.run_id:
            return
        # A different server process: without persistence the queue, the job's keys
        # and unread results are gone. Put them back; publish what was in flight.
        log.warning("Redis restarted; re-publishing %d chunks in flight", len(self.inflight))
        self._connect()
        self.store.put_meta(self.manifest.meta())
        self.store.set_bitmap(self.store.keys.done, self.delivered.data)
        self.store.acquire()
        self.owed |= self.inflight
        self._flush_owed()
        # Recorded only now: an outage during the steps above repeats them.
        self.run_id = run_id
        self.manifest.update(run_id=run_id)
        self.store.put_meta({"run_id": run_id})
        self._progress()

    def _check_stall(self) -> None:
        if not self.inflight or time.monotonic() - self.last_progress < self.stall_wait:
            return
        log.warning("no result for %.0f s; re-publishing %d chunks in flight",
                    self.stall_wait, len(self.inflight))  # fmt: skip
        self.owed |= self.inflight
        self._flush_owed()
        self.last_progress = time.monotonic()
        # Each silent period doubles the wait, so workers that are merely all down do
        # not find the queue holding one more copy of every chunk per stall timeout.
        self.stall_wait *= 2

    def _progress(self) -> None:
        self.last_progress = time.monotonic()
        self.stall_wait = self.settings.stall_timeout

    def _complete(self) -> None:
        if self.store.cancelled():  # cancelled after the last housekeeping: say so
            raise JobCancelled(f"job {self.job_id} was cancelled")
        fields = {"state": protocol.COMPLETE, "finished": time.time(),
                  "chunks": self.manifest.n_cut}  # fmt: skip
        self.manifest.update(**fields)
        try:
            self.store.finish(self.manifest.meta())
        except REDIS_ERRORS as exc:
            log.warning("job %s complete, but cleanup failed: %s", self.job_id, exc)
