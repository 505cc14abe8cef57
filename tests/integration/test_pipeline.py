"""The whole pipeline with real parts: CLI -> Redis -> prefork worker -> results file."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import VISIONQ, cli_env
from tests.images import mixed_folder, reference_probs
from visionq.schema import RECORD_FIELDS

pytestmark = pytest.mark.integration


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_submit_folder_gives_one_correct_result_per_input(
    clean_redis, start_worker, weights_file, tmp_path
):
    folder = tmp_path / "mixed"
    expected = mixed_folder(folder)
    start_worker(concurrency=2)
    out = tmp_path / "r.jsonl"
    proc = subprocess.run(
        [*VISIONQ, "submit", str(folder), "--out", str(out), "--top-k", "5",
         "--chunk-size", "4", "--timeout", "120"],
        env=cli_env(clean_redis, str(tmp_path / "state")),
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = _read(out)
    by_name = {os.path.basename(r["path"]): r for r in records}
    assert len(records) == len(expected) == len(by_name), "exactly one line per input"
    assert set(by_name) == set(expected)

    for name, etype in expected.items():
        r = by_name[name]
        assert set(RECORD_FIELDS) <= set(r)
        if etype is None:
            assert r["ok"] is True, (name, r["error"])
            assert len(r["top_k"]) == 5 and r["error"] is None
            assert r["weights"].startswith("file-") and r["device"] == "cpu"
        else:
            assert r["ok"] is False and r["top_k"] == []
            assert r["error"]["type"] == etype, (name, r["error"])
            assert r["error"]["message"]

    good = [r["path"] for r in records if r["ok"] and not r["path"].endswith("sixteen-bit.png")]
    ref = reference_probs(good, weights_file)
    worst = 0.0
    for path in good:
        for entry in by_name[os.path.basename(path)]["top_k"]:
            worst = max(worst, abs(entry["prob"] - float(ref[path][entry["index"]])))
    assert worst < 1e-4, f"max probability difference {worst:g}"
    assert "images:" in proc.stderr and "failed" in proc.stderr  # the summary line


def test_no_wait_then_collect_writes_csv(clean_redis, start_worker, sample_dir, tmp_path):
    start_worker(concurrency=2)
    env = cli_env(clean_redis, str(tmp_path / "state"))
    sub = subprocess.run(
        [*VISIONQ, "submit", str(sample_dir), "--no-wait", "--chunk-size", "2"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip()
    assert len(job_id) == 32 and "\n" not in job_id
    out = tmp_path / "r.csv"
    col = subprocess.run(
        [*VISIONQ, "collect", job_id, "--out", str(out), "--timeout", "120"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert col.returncode == 0, col.stderr
    lines = out.read_text().splitlines()
    assert lines[0].startswith("path,ok,top1_index,top1_label,top1_prob")
    assert len(lines) == 1 + len(list(sample_dir.glob("*.jpg")))
    # Collected results are removed from Redis; only the job's summary hash remains.
    keys = clean_redis.client().keys("*")
    assert not [k for k in keys if k.startswith(b"celery-task-meta-")], keys


def test_timeout_without_workers_exits_1(clean_redis, sample_dir, tmp_path):
    proc = subprocess.run(
        [*VISIONQ, "submit", str(sample_dir), "--out", str(tmp_path / "r.jsonl"),
         "--timeout", "2"],
        env=cli_env(clean_redis, str(tmp_path / "state")),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "missing" in proc.stderr


def test_usage_errors_exit_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([*VISIONQ, "submit", str(empty)], capture_output=True, text=True)
    assert proc.returncode == 2 and "no input" in proc.stderr
    proc = subprocess.run([*VISIONQ, "submit", "--top-k", "0", "x.jpg"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2


def test_unreachable_redis_fails_clearly(tmp_path, sample_dir):
    from producer.embedded import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    env = cli_env(
        type("T", (), {"broker_url": url, "backend_url": url})(),
        str(tmp_path / "state"),
        VISIONQ_REDIS_TIMEOUT="2",
    )
    proc = subprocess.run([*VISIONQ, "submit", str(sample_dir)], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 3
    assert "cannot reach Redis" in proc.stderr


def test_out_file_belongs_to_one_job(clean_redis, start_worker, sample_dir, tmp_path):
    start_worker(concurrency=2)
    env = cli_env(clean_redis, str(tmp_path / "state"))
    out = tmp_path / "r.jsonl"
    n = len(list(sample_dir.glob("*.jpg")))

    def submit(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*VISIONQ, "submit", str(sample_dir), "--chunk-size", "2", "-q", *extra],
            env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip

    assert submit("--out", str(out)).returncode == 0
    # A new job overwrites the file: its chunk numbers must not pass for the old job's.
    assert submit("--out", str(out)).returncode == 0
    records = _read(out)
    assert len(records) == n and len({r["job"] for r in records}) == 1
    # Resuming a different job into that file is refused, and the file is left alone.
    job = submit("--no-wait").stdout.strip()
    col = subprocess.run(
        [*VISIONQ, "collect", job, "--out", str(out), "--timeout", "60"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert col.returncode == 2 and "holds results of job" in col.stderr
    assert _read(out) == records


def test_int8_opt_in_classifies_through_the_worker(clean_redis, start_worker, sample_dir, tmp_path):
    start_worker(concurrency=1, VISIONQ_PRECISION="int8", VISIONQ_INT8_CALIBRATION=str(sample_dir))
    out = tmp_path / "r.jsonl"
    proc = subprocess.run(
        [*VISIONQ, "submit", str(sample_dir), "--out", str(out), "--timeout", "120", "-q"],
        env=cli_env(clean_redis, str(tmp_path / "state")),
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = _read(out)
    assert len(records) == len(list(sample_dir.glob("*.jpg")))
    assert all(r["ok"] and r["precision"] == "int8" for r in records)
    # Probabilities still come from a softmax: positive, descending, top-5 mass <= 1.
    for r in records:
        probs = [t["prob"] for t in r["top_k"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
