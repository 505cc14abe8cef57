"""VISIONQ_PRECISION=auto: each child times fp32 against its reduced precision at start-up,
runs the faster one, and both ``visionq status`` and the results say what ran."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import RedisTarget
from tests.integration.ops_helpers import run_job, sample_paths
from tests.integration.test_status import status, status_json
from workers.precision import cpu_supports_bf16


@pytest.mark.integration
def test_auto_runs_the_faster_precision_and_says_so(
    clean_redis: RedisTarget, start_worker, tmp_path: Path
) -> None:
    start_worker(concurrency=1, name="auto@visionq", VISIONQ_PRECISION="auto")
    (child,) = status_json(clean_redis, tmp_path)["workers"][0]["children"]
    if not cpu_supports_bf16():
        # Nothing to weigh on this CPU: plain fp32, no check.
        assert child["precision"] == "fp32" and child["speed"] == ""
    else:
        assert child["speed"].startswith("asked auto: bf16 ")
        slower = child["speed"].endswith("slower)")
        assert child["precision"] == ("fp32" if slower else "bf16")
        assert "speed check: asked auto" in status(clean_redis, tmp_path).stdout

    records = run_job(clean_redis, sample_paths(), tmp_path / "state")
    assert len(records) == len(sample_paths()) and all(r["ok"] for r in records)
    assert {r["precision"] for r in records} == {child["precision"]}


@pytest.mark.integration
def test_asked_bf16_the_child_reports_its_speed_check(
    clean_redis: RedisTarget, start_worker, tmp_path: Path
) -> None:
    if not cpu_supports_bf16():
        pytest.skip("this CPU has no native bf16; bf16 falls back to fp32 before any check")
    start_worker(concurrency=1, name="bf16@visionq", VISIONQ_PRECISION="bf16")
    (child,) = status_json(clean_redis, tmp_path)["workers"][0]["children"]
    # Asked for bf16, the child keeps it even when slower, and shows both figures.
    assert child["precision"] == "bf16"
    assert child["speed"].startswith("asked bf16: bf16 ") and "vs fp32 " in child["speed"]
