"""`visionq run`: private Redis + local prefork worker, and nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import VISIONQ, bare_env

pytestmark = pytest.mark.integration

MARKS = ("visionq-run@", "visionq-redis-")


def _ppid(pid: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return 0


def _leftovers() -> list[str]:
    """Processes `visionq run` starts, except this test session's own Redis (a child of
    pytest, named alike since private servers listen in a visionq-redis-* folder)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if _ppid(pid) == os.getpid():
                continue
        except OSError:
            continue
        if any(m in cmd for m in MARKS):
            found.append(f"{pid}: {cmd}")
    return found


def _env(tmp_path: Path) -> dict[str, str]:
    return bare_env(VISIONQ_STATE_DIR=str(tmp_path / "state"))


def test_run_classifies_and_leaves_nothing_running(sample_dir, weights_file, tmp_path):
    assert not _leftovers()
    out = tmp_path / "r.jsonl"
    proc = subprocess.run(
        [*VISIONQ, "run", str(sample_dir), "--out", str(out), "--weights", weights_file],
        env=_env(tmp_path), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(Path(r["path"]).name for r in records) == sorted(
        p.name for p in sample_dir.iterdir()
    )
    assert all(r["ok"] and r["worker"].startswith("visionq-run@") for r in records)
    time.sleep(0.5)
    assert not _leftovers()


def test_run_interrupted_stops_everything(sample_dir, weights_file, tmp_path):
    # Enough missing paths to keep the job busy while we interrupt it.
    listing = tmp_path / "paths.txt"
    listing.write_text("".join(f"{sample_dir}/missing-{i}.jpg\n" for i in range(2000)))
    proc = subprocess.Popen(
        [*VISIONQ, "run", "--from-file", str(listing), "--out", str(tmp_path / "r.jsonl"),
         "--weights", weights_file, "--chunk-size", "1"],
        env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # As from a terminal: a test runner started in the background ignores SIGINT,
        # and its children would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not any("visionq-run@" in p for p in _leftovers()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the local worker never started"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    time.sleep(0.5)
    assert not _leftovers(), "visionq run left processes behind after Ctrl-C"


def test_run_without_inputs_is_a_usage_error(tmp_path):
    proc = subprocess.run(
        [*VISIONQ, "run", str(tmp_path), "--out", str(tmp_path / "r.jsonl")],
        env=_env(tmp_path), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert not _leftovers()
