"""A pickle planted at the torch hub cache path never runs in a worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.harness import wait_until
from tests.planted import plant

pytestmark = pytest.mark.integration


def test_planted_checkpoint_is_refused_by_the_worker(start_worker, tmp_path: Path):
    torch_home = tmp_path / "torch"
    checkpoint = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    marker = tmp_path / "planted-pickle-ran"
    plant(checkpoint, marker)

    worker = start_worker(concurrency=1, wait=False, VISIONQ_WEIGHTS="imagenet",
                          TORCH_HOME=str(torch_home))  # fmt: skip
    wait_until(lambda: "visionq child cannot start" in worker.log_text(), 120,
               "the child to refuse the planted file")  # fmt: skip
    assert not marker.exists(), "the planted pickle ran in the worker"
    log = worker.log_text()
    assert "does not match its published hash" in log, log[-3000:]
    # The node stops instead of respawning children that would fail the same way.
    wait_until(lambda: worker.proc.poll() is not None, 60, "the node to stop")
    assert not marker.exists()
