"""VISIONQ_DECODE=gpu on a child without CUDA: it warns, decodes on the CPU, and serves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import RedisTarget
from tests.images import reference_probs
from tests.integration.ops_helpers import run_job, sample_paths
from tests.integration.test_status import status_json


@pytest.mark.integration
@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA")
def test_gpu_decoding_on_a_cpu_child_falls_back_to_the_exact_path(
    clean_redis: RedisTarget, start_worker, weights_file: str, tmp_path: Path
) -> None:
    worker = start_worker(concurrency=1, name="decode@visionq", VISIONQ_DECODE="gpu")
    assert "VISIONQ_DECODE=gpu but this child runs on cpu" in worker.log_text()
    (child,) = status_json(clean_redis, tmp_path)["workers"][0]["children"]
    assert child["decode"] == "cpu"

    paths = sample_paths()
    records = run_job(clean_redis, paths, tmp_path / "state")
    assert len(records) == len(paths) and all(r["ok"] for r in records)
    # The CPU fallback is the exact path: same top-1 as an in-process reference.
    ref = reference_probs(paths, weights_file)
    for r in records:
        assert r["top_k"][0]["index"] == int(ref[r["path"]].argmax()), r["path"]
