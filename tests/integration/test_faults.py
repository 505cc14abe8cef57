"""Faults under load, with real Redis servers and real prefork workers.

Each test kills something mid-job (a pool child, a whole worker node, Redis, the
collector) or feeds an input that kills or hangs its child, then checks that every
image ends with exactly one result line. Lost and duplicated results are counted and
printed (``pytest -s`` shows the ``FIGURE`` lines that docs/reliability.md quotes).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer.embedded import RedisServer, free_port
from tests.conftest import VISIONQ, RedisTarget, cli_env
from tests.integration.harness import (
    FAULTINJECT,
    alive,
    assert_exactly_once,
    finish,
    kill_group,
    line_count,
    make_corpus,
    pool_children,
    read_records,
    visionq,
    wait_until,
    write_list,
)
from visionq.schema import ErrorType

pytestmark = pytest.mark.integration

N_IMAGES = 400
CHUNK = "16"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return make_corpus(tmp_path_factory.mktemp("corpus"), N_IMAGES)


def _submit(target: RedisTarget, tmp_path: Path, paths: list[str], out: Path,
            timeout: float = 240, **env: str):  # fmt: skip
    listing = write_list(tmp_path / "paths.txt", paths)
    return visionq(
        ["submit", "--from-file", listing, "--out", str(out), "--chunk-size", CHUNK,
         "--timeout", str(timeout), "--quiet"],
        cli_env(target, str(tmp_path / "state"), **env),
    )  # fmt: skip


def test_pool_child_killed_mid_chunk(clean_redis, start_worker, corpus, tmp_path):
    worker = start_worker(concurrency=2)
    out = tmp_path / "r.jsonl"
    start = time.monotonic()
    cli = _submit(clean_redis, tmp_path, corpus, out)
    wait_until(lambda: line_count(out) >= 2 * int(CHUNK), 90, "the first chunks")
    # A chunk takes ~0.7 s here and each child picks its next one at once (prefetch 1),
    # so a moment after a write both children are in the middle of a chunk. Should a
    # kill land in the gap between two chunks anyway, the oldest (warm) child is killed
    # again, at most twice more.
    victims: list[int] = []
    while len(victims) < 3:
        time.sleep(0.3)
        # Zombies stay listed until the pool reaps them, which can take seconds.
        victims.append(next(c for c in pool_children(worker.proc.pid) if alive(c)))
        os.kill(victims[-1], signal.SIGKILL)
        wait_until(lambda: f"pid:{victims[-1]} exited" in worker.log_text(), 30, "the reap")
        time.sleep(0.2)
        if "WorkerLostError" in worker.log_text():  # it died holding a chunk
            break
    rc, _, err = finish(cli, 240)
    took = time.monotonic() - start
    assert rc == 0, err
    records = read_records(out)
    assert_exactly_once("pool child SIGKILL", records, corpus, took)
    assert all(r["ok"] for r in records)
    log = worker.log_text()
    assert f"pid:{victims[0]} exited with 'signal 9 (SIGKILL)'" in log, log[-3000:]
    redelivered = _redelivered(log)
    print(f"FIGURE pool child SIGKILL: kills={len(victims)} "
          f"chunks delivered twice={len(redelivered)}")  # fmt: skip
    assert redelivered, "the killed child's chunk must be requeued and received again"
    assert worker.proc.poll() is None, "the worker node itself must survive"


def _received(log: str) -> list[str]:
    return re.findall(r"Task visionq\.classify\[([0-9a-f]+:\d+)\] received", log)


def _redelivered(log: str) -> list[str]:
    return [tid for tid, n in Counter(_received(log)).items() if n > 1]


def test_worker_node_killed_then_replaced(clean_redis, start_worker, corpus, tmp_path):
    # The producer's stall timer (300 s) stays out of the way: recovery must come from
    # kombu restoring the dead node's unacknowledged chunks after the visibility timeout.
    env = {"VISIONQ_VISIBILITY_TIMEOUT": "30"}
    first = start_worker(concurrency=2, name="first@%h", **env)
    out = tmp_path / "r.jsonl"
    start = time.monotonic()
    cli = _submit(clean_redis, tmp_path, corpus, out, **env)
    wait_until(lambda: line_count(out) >= 2 * int(CHUNK), 90, "the first chunks")
    kill_group(first.proc.pid)
    killed = time.monotonic()
    time.sleep(5)
    second = start_worker(concurrency=2, name="second@%h", wait=False, **env)
    rc, _, err = finish(cli, 240)
    done = time.monotonic()
    assert rc == 0, err
    records = read_records(out)
    assert_exactly_once("worker node SIGKILL", records, corpus, done - start)
    print(f"FIGURE worker node SIGKILL: complete {done - killed:.1f} s after the kill")
    assert done - killed < 240
    assert all(r["ok"] for r in records)
    assert any(r["worker"].startswith("second@") for r in records)
    # The dead node's unacknowledged chunks came back: the second node received them too.
    both = set(_received(first.log_text())) & set(_received(second.log_text()))
    print(f"FIGURE worker node SIGKILL: chunks restored from the dead node={len(both)}")
    assert both
    assert second.proc.poll() is None


def test_redis_killed_and_restarted(start_worker, corpus, tmp_path):
    server = RedisServer(port=free_port()).start()  # TCP: restarted at the same address
    target = RedisTarget(server.url(0), server.url(1), server)
    try:
        worker = start_worker(
            concurrency=2,
            VISIONQ_BROKER_URL=target.broker_url,
            VISIONQ_RESULT_BACKEND=target.backend_url,
        )
        pid = worker.proc.pid
        out = tmp_path / "r.jsonl"
        start = time.monotonic()
        cli = _submit(target, tmp_path, corpus, out)
        wait_until(lambda: line_count(out) >= 4 * int(CHUNK), 90, "the first chunks")
        kill_group(server.proc.pid)  # no persistence: queue, results, manifest all gone
        server.stop()  # reaps it and removes its folder
        time.sleep(2)
        restarted = time.monotonic()
        server = RedisServer(port=server.port).start()
        rc, _, err = finish(cli, 240)
        done = time.monotonic()
        assert rc == 0, err + worker.log_text()[-6000:]
        records = read_records(out)
        assert_exactly_once("Redis SIGKILL + restart", records, corpus, done - start)
        print(f"FIGURE Redis SIGKILL + restart: complete {done - restarted:.1f} s after restart")
        assert all(r["ok"] for r in records)
        assert worker.proc.poll() is None and worker.proc.pid == pid, "the worker must survive"
        log = worker.log_text()
        assert log.count("Connected to redis://") >= 2, log[-3000:]  # and it reconnected
    finally:
        server.stop()


def test_consumer_deaf_after_a_reconnect_is_reconnected(clean_redis, start_worker, corpus,
                                                         tmp_path):  # fmt: skip
    # A worker that reconnects and then takes nothing (celery#8030, #10205) looks alive
    # by its pid. The watchdog sees work waiting while the worker holds none and makes
    # the consumer connect again.
    flag = tmp_path / "deaf"
    worker = start_worker(
        concurrency=2, PYTHONPATH=FAULTINJECT, VISIONQ_FAULTS="1",
        VISIONQ_FAULT_DEAF_FLAG=str(flag), VISIONQ_CONSUMER_PATIENCE="4",
    )  # fmt: skip
    pid = worker.proc.pid
    flag.touch()
    broker = clean_redis.client(clean_redis.broker_url)
    consumers = [c["id"] for c in broker.client_list() if c.get("cmd") == "brpop"]
    assert consumers, "the worker's consumer must be waiting on its queue"
    for client_id in consumers:
        broker.client_kill_filter(_id=client_id)
    wait_until(lambda: not flag.exists(), 30, "the reconnect that makes the consumer deaf")
    out = tmp_path / "r.jsonl"
    start = time.monotonic()
    rc, _, err = finish(_submit(clean_redis, tmp_path, corpus[:64], out, timeout=120), 150)
    took = time.monotonic() - start
    assert rc == 0, err + worker.log_text()[-3000:]
    assert_exactly_once("deaf consumer", read_records(out), corpus[:64], took)
    log = worker.log_text()
    assert "consumer took nothing for 4 s" in log, log[-3000:]
    print(f"FIGURE deaf consumer: job done {took:.1f} s after submit")
    assert worker.proc.poll() is None and worker.proc.pid == pid


def test_collect_killed_and_resumed(clean_redis, start_worker, corpus, tmp_path):
    start_worker(concurrency=2)
    env = cli_env(clean_redis, str(tmp_path / "state"))
    listing = write_list(tmp_path / "paths.txt", corpus)
    start = time.monotonic()
    sub = subprocess.run(
        [*VISIONQ, "submit", "--from-file", listing, "--no-wait", "--chunk-size", CHUNK],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip()
    out = tmp_path / "r.jsonl"
    first = visionq(["collect", job_id, "--out", str(out), "--quiet"], env)
    wait_until(lambda: line_count(out) >= 3 * int(CHUNK), 90, "the first chunks")
    kill_group(first.pid)
    first.communicate(timeout=10)
    before = line_count(out)
    with open(out, "ab") as fh:  # as if the kill had struck in the middle of a write
        fh.write(b'{"path":"/torn-line","ok":tr')
    rc, _, err = finish(visionq(["collect", job_id, "--out", str(out), "--timeout", "240"],
                                env), 240)  # fmt: skip
    took = time.monotonic() - start
    assert rc == 0, err
    records = read_records(out)
    assert_exactly_once("collect SIGKILL + resume", records, corpus, took)
    assert "already in the file" in err, err
    print(f"FIGURE collect SIGKILL + resume: {before} lines written before the kill")
    _check_done_chunks_are_skipped(clean_redis, tmp_path, corpus[:32])


def _check_done_chunks_are_skipped(target: RedisTarget, tmp_path: Path, paths: list[str]) -> None:
    """A delivery of a chunk the producer already wrote does no work and stores no
    result (celery Ignore), so duplicates leave no stray result keys behind."""
    from producer.client import Client
    from visionq import protocol
    from visionq.settings import Settings

    job_id = "dup" + "0" * 29
    db = target.client()
    db.setbit(protocol.JobKeys(job_id).done, 0, 1)  # as if chunk 0 had been collected
    settings = Settings(broker_url=target.broker_url, result_backend=target.backend_url,
                        state_dir=str(tmp_path / "state"))  # fmt: skip
    with Client(settings=settings) as client:
        client.submit(paths, chunk_size=16, job_id=job_id)
    wait_until(lambda: db.exists(protocol.result_key(job_id, 1)), 60, "chunk 1's result")
    time.sleep(1)
    assert not db.exists(protocol.result_key(job_id, 0)), "a skipped chunk stored a result"


def test_poison_and_hanging_images_are_isolated(clean_redis, start_worker, tmp_path):
    # 5 chunks of 8. Opening *POISON* SIGKILLs the child every time; *HANG* sleeps
    # until the soft time limit (8 - 5 = 3 s) fails the chunk.
    def name(i: int) -> str:
        return {11: "img-POISON.jpg", 29: "img-HANG.jpg"}.get(i, f"img{i:04d}.jpg")

    paths = make_corpus(tmp_path / "imgs", 40, seed=7, names=name)
    poison, hang = paths[11], paths[29]
    worker = start_worker(
        concurrency=2, PYTHONPATH=FAULTINJECT, VISIONQ_FAULTS="1", VISIONQ_TASK_TIME_LIMIT="8"
    )
    out = tmp_path / "r.jsonl"
    listing = write_list(tmp_path / "paths.txt", paths)
    start = time.monotonic()
    rc, _, err = finish(visionq(
        ["submit", "--from-file", listing, "--out", str(out), "--chunk-size", "8",
         "--timeout", "200", "--quiet"],
        cli_env(clean_redis, str(tmp_path / "state")),
    ), 240)  # fmt: skip
    took = time.monotonic() - start
    assert rc == 0, err
    records = read_records(out)
    assert_exactly_once("poison + hang", records, paths, took)
    by_path = {r["path"]: r for r in records}
    for p in (poison, hang):
        assert by_path[p]["error"]["type"] == ErrorType.POISON_INPUT, by_path[p]
    assert all(r["ok"] for p, r in by_path.items() if p not in (poison, hang))
    log = worker.log_text()
    kills = log.count("exited with 'signal 9 (SIGKILL)'")
    soft = log.count("raised unexpected: SoftTimeLimitExceeded")
    print(f"FIGURE poison + hang: child kills={kills} soft time limits={soft}")
    # 3 plain deliveries, then careful mode stops once on the culprit: 4 kills and
    # 4 timeouts, the 5th delivery skips it. No loop.
    assert (kills, soft) == (4, 4), log[-3000:]
    assert worker.proc.poll() is None


def test_paused_redis_fails_fast(tmp_path, corpus):
    """A SIGSTOPped Redis accepts connections and answers nothing: exit 3, bounded."""
    with RedisServer() as server:
        target = RedisTarget(server.url(0), server.url(1), server)
        env = cli_env(target, str(tmp_path / "state"), VISIONQ_REDIS_TIMEOUT="3")
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            rc, _, err = finish(visionq(["submit", corpus[0], "--quiet"], env), 60)
            took = time.monotonic() - start
            assert rc == 3, err
            assert "cannot reach Redis" in err
            start = time.monotonic()
            rc, _, err = finish(visionq(["collect", "0" * 32, "--out",
                                         str(tmp_path / "r.jsonl")], env), 60)  # fmt: skip
            took_collect = time.monotonic() - start
            assert rc == 3, err
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
    print(f"FIGURE paused Redis: submit exit 3 after {took:.1f} s, "
          f"collect after {took_collect:.1f} s (VISIONQ_REDIS_TIMEOUT=3)")  # fmt: skip
    assert took < 20 and took_collect < 20


def test_publish_to_paused_redis_is_bounded(tmp_path):
    """Redis pauses after the producer connected: publishing gives up, it never hangs."""
    from producer.client import Client
    from producer.errors import BackendUnavailable
    from visionq.settings import Settings

    with RedisServer() as server:
        settings = Settings(broker_url=server.url(0), redis_timeout=3.0,
                            state_dir=str(tmp_path / "state"))  # fmt: skip
        with Client(settings=settings) as client:
            client.wait_ready()
            paths = (f"/nonexistent/{i}.jpg" for i in range(10_000))

            def pause_midway() -> Iterator[str]:
                for i, p in enumerate(paths):
                    if i == 64:
                        os.kill(server.proc.pid, signal.SIGSTOP)
                    yield p

            start = time.monotonic()
            try:
                with pytest.raises(BackendUnavailable):
                    client.submit(pause_midway(), chunk_size=8)
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            took = time.monotonic() - start
    print(f"FIGURE paused Redis mid-publish: BackendUnavailable after {took:.1f} s")
    assert took < 30


def test_worker_started_before_redis(start_worker, corpus, tmp_path):
    port = free_port()
    target = RedisTarget(f"redis://127.0.0.1:{port}/0", f"redis://127.0.0.1:{port}/1")
    worker = start_worker(
        concurrency=2, wait=False,
        VISIONQ_BROKER_URL=target.broker_url, VISIONQ_RESULT_BACKEND=target.backend_url,
    )  # fmt: skip
    time.sleep(5)
    assert worker.proc.poll() is None, worker.log_text()[-3000:]
    with RedisServer(port=port) as server:
        up = time.monotonic()
        target.server = server
        paths = corpus[:32]
        out = tmp_path / "r.jsonl"
        rc, _, err = finish(_submit(target, tmp_path, paths, out, timeout=150), 180)
        took = time.monotonic() - up
        assert rc == 0, err
        assert_exactly_once("worker before Redis", read_records(out), paths, took)
        assert alive(worker.proc.pid)
