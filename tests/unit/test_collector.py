"""The collector against a real Redis, with a stub worker instead of the model.

Each test feeds the collector what a fleet can produce: results in any order,
duplicates, payloads for the wrong paths, failures, a second collector, a second sink,
a cancel. Every test checks that each input comes out exactly once.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from producer.client import Client
from producer.errors import JobBusy, JobCancelled, JobNotSealed
from tests.conftest import RedisTarget
from tests.stubworker import StubWorker, label_of
from visionq import protocol
from visionq.settings import Settings


def _settings(target: RedisTarget, tmp_path: Path, **kw: Any) -> Settings:
    return Settings(broker_url=target.broker_url, result_backend=target.backend_url,
                    state_dir=str(tmp_path / "state"), redis_timeout=5.0, **kw)  # fmt: skip


@pytest.fixture
def client(clean_redis: RedisTarget, tmp_path: Path) -> Iterator[Client]:
    with Client(settings=_settings(clean_redis, tmp_path)) as c:
        yield c


@pytest.fixture
def stub(clean_redis: RedisTarget) -> StubWorker:
    return StubWorker(clean_redis.client(clean_redis.broker_url), clean_redis.client())


class Serving:
    """Runs a stub worker in a thread while a test drives the collector."""

    def __init__(self, stub: StubWorker, answer: Callable | None = None) -> None:
        self.stub = stub
        self.answer = answer
        self.stop = threading.Event()
        self.max_queued = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.max_queued = max(self.max_queued, self.stub.broker.llen(self.stub.queue))
            if not self.stub.serve(n=4, answer=self.answer):
                time.sleep(0.01)

    def __enter__(self) -> Serving:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def paths(n: int, prefix: str = "/data/img") -> list[str]:
    return [f"{prefix}{i:06d}.jpg" for i in range(n)]


def check_once(records: list[dict[str, Any]], want: list[str]) -> None:
    seen = Counter(r["path"] for r in records)
    assert set(seen) == set(want), "lost or stray paths"
    assert max(seen.values()) == 1, "duplicated paths"
    assert all(r["top_k"][0]["label"] == label_of(r["path"]) for r in records)


def test_every_path_once_and_the_window_bounds_the_queue(client, stub):
    want = paths(5000)
    job = client.submit(want)
    with Serving(stub) as serving:
        records = list(job.results(timeout=60))
    check_once(records, want)
    # The window (2 per child + 1; two children assumed without a registry) bounds what
    # sits in Redis, whatever the job's size.
    assert serving.max_queued <= 5
    assert job.state == protocol.COMPLETE


def test_chunks_shrink_towards_the_end(client, stub):
    want = paths(3000)
    job = client.submit(want)
    with Serving(stub):
        list(job.results(timeout=60))
    sizes = [len(p) for _, _, p in stub.seen]
    assert sum(sizes) == 3000
    assert max(sizes) > 4 * sizes[-1], sizes  # large early, small at the end
    assert all(s % 8 == 0 for s in sizes[:-1]), "chunks fill whole CPU batches"


def test_fixed_chunk_size_is_kept(client, stub):
    job = client.submit(paths(100), chunk_size=16)
    with Serving(stub):
        list(job.results(timeout=60))
    assert [len(p) for _, _, p in stub.seen] == [16] * 6 + [4]


def test_duplicates_are_written_once(client, stub):
    want = paths(400)
    job = client.submit(want, chunk_size=40)

    def twice(tid: str, chunk: int, ps: list[str]) -> tuple[str, Any]:
        stub.store(tid, "SUCCESS", stub.payload(chunk, ps))  # a redelivery's result
        return "SUCCESS", stub.payload(chunk, ps)

    with Serving(stub, twice):
        records = list(job.results(timeout=60))
    check_once(records, want)


def test_a_payload_for_other_paths_is_rejected_and_rerun(client, stub):
    want = paths(200)
    job = client.submit(want, chunk_size=20)
    forged: set[int] = set()

    def wrong_once(tid: str, chunk: int, ps: list[str]) -> tuple[str, Any]:
        if chunk == 3 and chunk not in forged:
            forged.add(chunk)  # another chunk's paths under chunk 3's id
            return "SUCCESS", stub.payload(chunk, paths(20, "/elsewhere/x"))
        return "SUCCESS", stub.payload(chunk, ps)

    with Serving(stub, wrong_once):
        records = list(job.results(timeout=60))
    check_once(records, want)
    assert [c for _, c, _ in stub.seen].count(3) == 2, "chunk 3 must run again"


def test_failed_chunks_are_republished(client, stub):
    want = paths(120)
    job = client.submit(want, chunk_size=30)
    failures = Counter()

    def flaky(tid: str, chunk: int, ps: list[str]) -> tuple[str, Any]:
        if failures[chunk] < 2:
            failures[chunk] += 1
            return "FAILURE", {"exc_type": "SystemicError", "exc_message": "EIO"}
        return "SUCCESS", stub.payload(chunk, ps)

    with Serving(stub, flaky):
        records = list(job.results(timeout=60))
    check_once(records, want)
    assert all(n == 2 for n in failures.values())


def test_a_second_collector_is_refused(client, stub, clean_redis, tmp_path):
    job = client.submit(paths(50), chunk_size=10)
    it = job.iter_chunks(timeout=30)
    with Serving(stub):
        next(it)  # the first collector holds the lease now
        with Client(settings=_settings(clean_redis, tmp_path)) as other, pytest.raises(JobBusy):
            next(other.job(job.id).iter_chunks(timeout=5))
        rest = list(it)
    assert 1 + len(rest) == 5


def test_a_second_sink_gets_the_whole_job(client, stub, tmp_path):
    want = paths(300)
    job = client.submit(want, chunk_size=30)
    first: list[dict[str, Any]] = []
    with Serving(stub):
        it = job.iter_chunks(timeout=30)
        for _ in range(4):
            first += next(it)[1]
        it.close()  # the first sink stops after 4 chunks
        # A new sink: chunks the first one got are re-run, not waited for.
        second = list(client.job(job.id).results(timeout=30))
    assert len(first) == 120
    check_once(second, want)


def test_unsealed_job_cannot_be_collected(client):
    def broken() -> Iterator[str]:
        yield from paths(10)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        client.submit(broken(), job_id="half")
    with pytest.raises(JobNotSealed, match="10 paths staged"):
        client.job("half")
    # resumed with the same inputs: sealed, and each path once
    job = client.submit(paths(25), job_id="half", resume=True)
    assert len(job) == 25 and job.state == protocol.SUBMITTED


def test_cancel_drops_queued_chunks_and_keys(client, stub, clean_redis):
    job = client.submit(paths(1000), chunk_size=10, wait=False)  # all 100 chunks queued
    assert stub.broker.llen("visionq") == 100
    dropped = client.cancel(job.id)
    assert dropped == 100 and stub.broker.llen("visionq") == 0
    db = clean_redis.client()
    assert not any(db.exists(k) for k in protocol.JobKeys(job.id).all())
    assert db.exists(protocol.cancelled_key(job.id))


def test_a_collector_stops_when_its_job_is_cancelled(client, stub):
    job = client.submit(paths(100), chunk_size=10)
    got = 0
    with Serving(stub), pytest.raises(JobCancelled):
        for _ in job.iter_chunks(timeout=30):
            got += 1
            if got == 1:
                client.cancel(job.id)
    assert got < 10


def test_keys_are_refreshed_while_active(clean_redis, stub, tmp_path):
    with Client(settings=_settings(clean_redis, tmp_path, result_expires=4)) as c:
        job = c.submit(paths(40), chunk_size=10)
        db = clean_redis.client()
        meta_key = protocol.JobKeys(job.id).meta
        ttls = []
        slow = lambda tid, chunk, ps: (time.sleep(1.5), ("SUCCESS", stub.payload(chunk, ps)))[1]  # noqa: E731
        with Serving(stub, slow):
            for _ in job.iter_chunks(timeout=60):
                ttls.append(db.ttl(meta_key))
        # The job ran longer than its 4 s expiry, and its keys never lapsed.
        assert len(ttls) == 4 and min(ttls) > 0
        assert 0 < db.ttl(meta_key) <= 4  # then it expires after a quiet period


@pytest.mark.parametrize(
    "name",
    ["/a/plain.jpg", "/a/new\nline.jpg", '/a/"quoted".jpg', "/a/comma,x.jpg",
     "/a/" + os.fsdecode(b"caf\xe9.jpg"), '"/odd start', "/a/back\\slash.jpg", "/a/\r.jpg"],
)  # fmt: skip
def test_manifest_lines_round_trip_every_name(name):
    from producer.manifest import decode_line, encode_line

    assert decode_line(encode_line(name)) == name
    assert encode_line(name).count(b"\n") == 1


def test_a_dead_collector_on_this_host_does_not_hold_the_job(client, stub):
    import subprocess
    import sys

    from producer.jobstore import JobStore

    job = client.submit(paths(30), chunk_size=10)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = JobStore(client.redis, job.id, 60)
    store.token = f"{socket.gethostname()}:{dead.pid}:x"  # as if that process had it
    store.acquire()
    with Serving(stub):
        assert len(list(job.results(timeout=30))) == 30


def test_streamed_path_hash_equals_the_chunk_checksum():
    from visionq.chunks import PathHash, checksum

    names = ["/a/x.jpg", "/a/new\nline", "/a/" + os.fsdecode(b"\xff.jpg"), ""]
    h = PathHash()
    for n in names:
        h.add(n)
    assert h.hexdigest() == checksum(names)
