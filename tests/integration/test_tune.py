"""``visionq tune``: measures on the given images, recommends, and the recommendation works."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SAMPLES, VISIONQ, RedisTarget, bare_env
from tests.integration.ops_helpers import run_job, sample_paths


@pytest.mark.integration
def test_recommended_settings_start_a_worker_that_classifies_the_samples(
    clean_redis: RedisTarget, start_worker, weights_file: str, tmp_path: Path
) -> None:
    env = bare_env(VISIONQ_WEIGHTS=weights_file)
    proc = subprocess.run(
        [*VISIONQ, "tune", str(SAMPLES), "--json", "--budget", "60"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["images"] == len(sample_paths())
    rows = result["rows"]
    # The exact path comes first and agrees with itself; every row has a real rate.
    assert rows[0]["precision"] == "fp32" and not rows[0]["jpeg_draft"]
    assert rows[0]["agree_pct"] == 100.0
    assert all(r["img_s"] > 0 for r in rows)
    best = result["best"]
    chosen = next(r for r in rows if all(r[k] == v for k, v in best.items()))
    assert chosen["agree_pct"] >= result["tolerance"]
    # Each step keeps the fastest so far, so the pick beats every layout timed first.
    layouts = [r for r in rows if r["precision"] == "fp32" and r["batch"] == 8
               and not r["jpeg_draft"]]  # fmt: skip
    assert chosen["img_s"] >= max(r["img_s"] for r in layouts)

    start_worker(concurrency=best["children"], name="tuned@visionq", **result["env"])
    records = run_job(clean_redis, sample_paths(), tmp_path / "state")
    assert len(records) == len(sample_paths()) and all(r["ok"] for r in records)
    assert {r["precision"] for r in records} == {result["env"]["VISIONQ_PRECISION"]}


@pytest.mark.integration
def test_table_and_export_lines(weights_file: str) -> None:
    env = bare_env(VISIONQ_WEIGHTS=weights_file)
    proc = subprocess.run(
        [*VISIONQ, "tune", str(SAMPLES / "coffee.jpg"), "--budget", "20", "--quiet"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "top-1 agree" in out and "img/s" in out
    assert "export VISIONQ_PRECISION=" in out and "export VISIONQ_BATCH_SIZE=" in out
    assert "celery -A workers worker -P prefork -c " in out


def test_no_images_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*VISIONQ, "tune", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "no input" in proc.stderr
