"""Child processes that cannot outlive a benchmark: each leads a session and dies as a group."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from benchmarks.layout import ROOT
from producer.embedded import free_port, stop_group

__all__ = ["Finished", "free_port", "kill_group", "run_measured", "spawn"]


def spawn(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: IO[Any] | int | None = subprocess.DEVNULL,
    stderr: IO[Any] | int | None = subprocess.STDOUT,
    cwd: Path = ROOT,
) -> subprocess.Popen[bytes]:
    # A new session makes the child a process-group leader, so kill_group also reaches
    # grandchildren such as Celery's pool or torch.multiprocessing workers.
    return subprocess.Popen(
        list(cmd),
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the child's whole group, then SIGKILL whatever is left after ``grace`` seconds."""
    stop_group(proc, grace=grace)


@dataclass(frozen=True)
class Finished:
    returncode: int
    seconds: float
    max_rss_mb: float


def run_measured(
    cmd: Sequence[str], *, env: Mapping[str, str], log_path: Path, timeout: float
) -> Finished:
    """Run ``cmd`` to completion under the small ``benchmarks.maxrss`` launcher.

    Raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds, with the group killed.
    """
    report = log_path.with_suffix(".rusage.json")
    report.unlink(missing_ok=True)
    launcher = [sys.executable, "-m", "benchmarks.maxrss", str(report), "--", *cmd]
    with open(log_path, "wb") as log_file:
        proc = spawn(launcher, env=env, stdout=log_file)
    try:
        proc.wait(timeout=timeout)
    finally:
        kill_group(proc)
    if not report.exists():
        raise RuntimeError(f"launcher exited {proc.returncode} without a report")
    data = json.loads(report.read_text())
    return Finished(int(data["returncode"]), float(data["seconds"]), data["max_rss_kb"] / 1024)
