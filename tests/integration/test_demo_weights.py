"""`make demo` and `python -m workers.weights`: real weights when online, a loud
fallback to random weights only when the download is impossible."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from producer.embedded import stop_group
from tests.conftest import ROOT, bare_env

pytestmark = pytest.mark.integration


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return bare_env(
        TORCH_HOME=str(tmp_path / "torch"), VISIONQ_STATE_DIR=str(tmp_path / "state"), **extra
    )


def test_weights_step_is_a_no_op_for_other_weights(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "workers.weights"], cwd=ROOT,
                          env=_env(tmp_path, VISIONQ_WEIGHTS="random"),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "torch").exists()


def test_weights_step_refuses_an_altered_file_it_cannot_replace(tmp_path):
    checkpoint = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"not the published file")
    proc = subprocess.run([sys.executable, "-m", "workers.weights", "--check"], cwd=ROOT,
                          env=_env(tmp_path, VISIONQ_WEIGHTS="imagenet"),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1
    assert "does not match its published hash" in proc.stderr


@pytest.mark.skipif(not shutil.which("make"), reason="needs make")
def test_make_demo_fetches_weights_or_says_it_is_offline(tmp_path):
    # Its own session, so a timeout stops the whole stack `visionq run` started.
    proc = subprocess.Popen(["make", "-s", "demo"], cwd=ROOT, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        stop_group(proc, grace=10)
    out = stdout + stderr
    assert proc.returncode == 0, out[-3000:]
    labels = [line.split(" -> ", 1)[1] for line in stdout.splitlines() if " -> " in line]
    assert len(labels) == len(list((ROOT / "samples").glob("*.jpg"))), out[-3000:]
    checkpoint = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    if "OFFLINE" in out:
        # No network: random weights, and the output says so before any label.
        assert "weights=random" in out and not checkpoint.exists()
        assert out.index("OFFLINE") < out.index(" -> ")
    else:
        # Online: the verified ImageNet file, and the photos get different labels.
        assert "weights=imagenet" in out and checkpoint.exists()
        assert len(set(labels)) > 1, labels
