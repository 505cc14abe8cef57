"""The job lifecycle under faults, with a real Redis and real prefork workers.

Each test reproduces one way a big or interrupted job used to lose, duplicate or
misplace results (a Redis restart mid-job, a half-finished submit, two collectors, a
second sink, a symlink loop, a failing mount, a cancel), and checks every input comes
out exactly once, or that the refusal is clear and the output file untouched.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from producer.embedded import RedisServer, free_port
from tests.conftest import RedisTarget, cli_env
from tests.integration.harness import (
    FAULTINJECT,
    assert_exactly_once,
    finish,
    kill_group,
    line_count,
    make_corpus,
    read_records,
    visionq,
    wait_until,
    write_list,
)
from visionq import protocol
from visionq.schema import ErrorType

pytestmark = pytest.mark.integration


def _missing(n: int, tag: str = "gone") -> list[str]:
    # Missing files cost the worker nothing but the open: the queue is what is tested.
    return [f"/nonexistent/{tag}/img_{i:06d}.jpg" for i in range(n)]


def _run(args: list[str], target: RedisTarget, tmp_path: Path, timeout: float = 180, **env):
    return finish(visionq(args, cli_env(target, str(tmp_path / "state"), **env)), timeout)


def test_redis_restarted_while_a_big_job_runs(start_worker, tmp_path):
    """Defect 1: a restart used to shift a positional manifest (12 288 paths twice)."""
    server = RedisServer(port=free_port()).start()  # TCP: restarted at the same address
    target = RedisTarget(server.url(0), server.url(1), server)
    try:
        start_worker(VISIONQ_BROKER_URL=target.broker_url,
                     VISIONQ_RESULT_BACKEND=target.backend_url)  # fmt: skip
        want = _missing(60_000)
        out = tmp_path / "r.jsonl"
        cli = visionq(
            ["submit", "--from-file", write_list(tmp_path / "in.txt", want), "--out", str(out),
             "--quiet", "--timeout", "240"],
            cli_env(target, str(tmp_path / "state")),
        )  # fmt: skip
        wait_until(lambda: line_count(out) >= 5_000, 120, "the first results")
        kill_group(server.proc.pid)  # no persistence: queue, job keys and results are gone
        server.stop()
        time.sleep(1)
        server = RedisServer(port=server.port).start()
        rc, _, err = finish(cli, 240)
        assert rc == 0, err
        assert_exactly_once("Redis restart, 60k paths", read_records(out), want)
    finally:
        server.stop()


def test_interrupted_submit_is_resumed_then_collects_once(clean_redis, start_worker, tmp_path):
    """Defect 4: a half-submitted job used to collect as "0 images", exit 0."""
    start_worker()
    want = _missing(3000, "half")
    fifo = tmp_path / "paths.fifo"
    os.mkfifo(fifo)
    env = cli_env(clean_redis, str(tmp_path / "state"))
    cli = visionq(["submit", "--from-file", str(fifo), "--out", str(tmp_path / "a.jsonl")], env)
    with open(fifo, "w") as fh:
        fh.write("".join(p + "\n" for p in want[:1000]))
        fh.flush()
        job_id = wait_until(lambda: _job_ids(tmp_path / "state"), 30, "the job's manifest")[0]
        time.sleep(1)
        cli.send_signal(signal.SIGINT)  # the user gives up half-way
        rc, _, err = finish(cli, 30)
    assert rc == 130, err
    assert f"--resume {job_id}" in err
    rc, _, err = _run(["collect", job_id, "--out", str(tmp_path / "b.jsonl")], clean_redis,
                      tmp_path)  # fmt: skip
    assert rc == 2 and "never fully submitted" in err, err
    assert not (tmp_path / "b.jsonl").exists()
    listing = write_list(tmp_path / "all.txt", want)
    rc, _, err = _run(["submit", "--from-file", listing, "--resume", job_id, "--out",
                       str(tmp_path / "c.jsonl")], clean_redis, tmp_path)  # fmt: skip
    assert rc == 0, err
    assert_exactly_once("resumed submit", read_records(tmp_path / "c.jsonl"), want)


def test_interrupted_submit_can_be_cancelled(clean_redis, tmp_path):
    def staged() -> list[str]:
        return _job_ids(tmp_path / "state")

    fifo = tmp_path / "paths.fifo"
    os.mkfifo(fifo)
    cli = visionq(["submit", "--from-file", str(fifo), "--no-wait"],
                  cli_env(clean_redis, str(tmp_path / "state")))  # fmt: skip
    with open(fifo, "w") as fh:
        fh.write("/x/a.jpg\n")
        fh.flush()
        job_id = wait_until(staged, 30, "the job's manifest")[0]
        cli.send_signal(signal.SIGINT)
        finish(cli, 30)
    rc, _, err = _run(["cancel", job_id], clean_redis, tmp_path)
    assert rc == 0, err
    assert not staged(), "the local manifest must go"
    assert not clean_redis.client().exists(protocol.JobKeys(job_id).meta)
    rc, _, err = _run(["collect", job_id, "--out", str(tmp_path / "x.jsonl")], clean_redis,
                      tmp_path)  # fmt: skip
    assert rc == 2, err


def test_cancel_drops_queued_chunks(clean_redis, start_worker, tmp_path):
    listing = write_list(tmp_path / "in.txt", _missing(5000, "cancel"))
    rc, out, err = _run(["submit", "--from-file", listing, "--no-wait", "--chunk-size", "50"],
                        clean_redis, tmp_path)  # fmt: skip
    assert rc == 0, err
    job_id = out.strip()
    broker = clean_redis.client(clean_redis.broker_url)
    assert broker.llen("visionq") == 100  # no worker yet: every chunk waits
    rc, _, err = _run(["cancel", job_id], clean_redis, tmp_path)
    assert rc == 0 and "100 queued chunks dropped" in err, err
    assert broker.llen("visionq") == 0
    start_worker()
    time.sleep(2)
    db = clean_redis.client()
    assert not list(db.scan_iter(protocol.result_pattern(job_id)))
    assert not any(db.exists(k) for k in protocol.JobKeys(job_id).all())


def test_two_collectors_at_once(clean_redis, start_worker, tmp_path):
    """Defect 3: two collectors of one job into one file wrote 196 lines for 100."""
    start_worker(concurrency=1)
    want = make_corpus(tmp_path / "imgs", 60)
    listing = write_list(tmp_path / "in.txt", want)
    rc, out, err = _run(["submit", "--from-file", listing, "--no-wait", "--chunk-size", "8"],
                        clean_redis, tmp_path)  # fmt: skip
    job_id = out.strip()
    env = cli_env(clean_redis, str(tmp_path / "state"))
    first = visionq(["collect", job_id, "--out", str(tmp_path / "r.jsonl"), "--quiet"], env)
    wait_until(lambda: line_count(tmp_path / "r.jsonl") >= 8, 60, "the first collector")
    other = tmp_path / "other.jsonl"
    other.write_bytes(b"")
    for target in (tmp_path / "r.jsonl", other):
        before = target.read_bytes()
        rc, _, err = finish(visionq(["collect", job_id, "--out", str(target)], env), 30)
        assert rc == 2 and "being collected by" in err, err
        if target == other:
            assert target.read_bytes() == before, "a refused collector changed the file"
    rc, _, err = finish(first, 120)
    assert rc == 0, err
    assert_exactly_once("two collectors", read_records(tmp_path / "r.jsonl"), want)


def test_second_sink_after_a_partial_first(clean_redis, start_worker, tmp_path):
    """Defect 3b: a second file used to wait for chunks no worker would produce."""
    start_worker()
    want = _missing(4000, "sinks")
    listing = write_list(tmp_path / "in.txt", want)
    rc, out, err = _run(["submit", "--from-file", listing, "--no-wait", "--chunk-size", "100"],
                        clean_redis, tmp_path)  # fmt: skip
    job_id = out.strip()
    env = cli_env(clean_redis, str(tmp_path / "state"))
    first = visionq(["collect", job_id, "--out", str(tmp_path / "a.jsonl")], env)
    wait_until(lambda: line_count(tmp_path / "a.jsonl") >= 500, 60, "a partial first sink")
    kill_group(first.pid, signal.SIGKILL)
    first.communicate()
    rc, _, err = _run(["collect", job_id, "--out", str(tmp_path / "b.jsonl"), "--timeout",
                       "120"], clean_redis, tmp_path)  # fmt: skip
    assert rc == 0, err
    assert_exactly_once("second sink", read_records(tmp_path / "b.jsonl"), want)


def test_symlink_loops_do_not_multiply_paths(clean_redis, start_worker, tmp_path):
    """Defect 5: two loops turned two files into 200 000 paths."""
    start_worker()
    root = tmp_path / "tree"
    (root / "a").mkdir(parents=True)
    make_corpus(root / "a", 1, names=lambda i: "one.jpg")
    make_corpus(root, 1, names=lambda i: "two.jpg")
    (root / "a" / "up").symlink_to(root)
    (root / "loop").symlink_to(root / "a")
    out = tmp_path / "r.jsonl"
    rc, _, err = _run(["submit", str(root), "-r", "--out", str(out)], clean_redis, tmp_path)
    assert rc == 0, err
    records = read_records(out)
    assert len(records) == 2 and all(r["ok"] for r in records), records


def test_failing_mount_fails_the_chunk_which_is_retried(clean_redis, start_worker, tmp_path):
    """Defect 6: EIO used to become a permanent per-image error, and exit 0."""
    flag = tmp_path / "mount-broken"
    flag.touch()
    start_worker(PYTHONPATH=FAULTINJECT, VISIONQ_FAULTS="1", VISIONQ_FAULT_EIO_FLAG=str(flag))
    want = make_corpus(tmp_path / "EIOMNT", 24)
    env = cli_env(clean_redis, str(tmp_path / "state"))
    out = tmp_path / "r.jsonl"
    cli = visionq(["submit", *want, "--out", str(out)], env)
    time.sleep(4)  # the chunks fail meanwhile, and are re-published
    flag.unlink()  # the mount comes back
    rc, _, err = finish(cli, 120)
    assert rc == 0, err
    records = read_records(out)
    assert_exactly_once("EIO mount, recovered", records, want)
    assert all(r["ok"] for r in records), [r["error"] for r in records if not r["ok"]]


def test_mount_broken_on_every_attempt_says_so(clean_redis, start_worker, tmp_path):
    flag = tmp_path / "mount-broken"
    flag.touch()
    start_worker(PYTHONPATH=FAULTINJECT, VISIONQ_FAULTS="1", VISIONQ_FAULT_EIO_FLAG=str(flag),
                 VISIONQ_MAX_ATTEMPTS="2")  # fmt: skip
    good = make_corpus(tmp_path / "fine", 6)
    bad = make_corpus(tmp_path / "EIOMNT", 3)
    out = tmp_path / "r.jsonl"
    rc, _, err = _run(["submit", *good, *bad, "--out", str(out)], clean_redis, tmp_path,
                      VISIONQ_MAX_ATTEMPTS="2")  # fmt: skip
    assert rc == 4, err
    assert "host or device failed" in err
    records = read_records(out)
    assert_exactly_once("EIO mount, never recovered", records, good + bad)
    by_path = {r["path"]: r for r in records}
    assert all(by_path[p]["ok"] for p in good)
    assert all(by_path[p]["error"]["type"] == ErrorType.HOST_FAILURE for p in bad)


def _job_ids(state: Path) -> list[str]:
    jobs = state / "jobs"
    if not jobs.exists():
        return []
    return sorted(p.name for p in jobs.iterdir() if (p / "meta.json").exists())


def test_job_keys_live_while_active_and_expire_after(clean_redis, start_worker, tmp_path):
    """Defect 7: keys expired on a fixed clock from submit, even mid-job."""
    start_worker(concurrency=1, VISIONQ_RESULT_EXPIRES="3")
    want = make_corpus(tmp_path / "imgs", 40)
    out = tmp_path / "r.jsonl"
    rc, _, err = _run(["submit", *want, "--out", str(out), "--chunk-size", "8"], clean_redis,
                      tmp_path, VISIONQ_RESULT_EXPIRES="3")  # fmt: skip
    assert rc == 0, err
    assert_exactly_once("sliding expiry", read_records(out), want)
    db = clean_redis.client()
    meta = wait_until(lambda: db.keys(protocol.JOB_PREFIX + "*"), 5, "the job summary")
    assert json.loads(db.hget(meta[0], "state")) == protocol.COMPLETE
    wait_until(lambda: not db.keys(protocol.JOB_PREFIX + "*"), 10, "the summary to expire")
