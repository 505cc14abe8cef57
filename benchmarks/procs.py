"""Child processes that cannot outlive a benchmark: each leads its own session and dies as a group."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from benchmarks.layout import ROOT


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


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _group_alive(pgid: int) -> bool:
    return _signal_group(pgid, 0)


def kill_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the child's whole group, then SIGKILL whatever is left after ``grace`` seconds."""
    pgid = proc.pid
    if _signal_group(pgid, signal.SIGTERM):
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc.returncode is None:
                proc.poll()
            if proc.returncode is not None and not _group_alive(pgid):
                break
            time.sleep(0.05)
        _signal_group(pgid, signal.SIGKILL)
    if proc.returncode is None:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass


@dataclass(frozen=True)
class Finished:
    returncode: int
    seconds: float
    max_rss_mb: float


def wait_with_rusage(proc: subprocess.Popen[bytes], started: float, timeout: float) -> Finished:
    """Wait for ``proc`` and return its own peak RSS.

    ``os.wait4`` reports the rusage of that one child, unlike ``RUSAGE_CHILDREN``, which
    would mix in every process this benchmark has already reaped. Raises
    ``subprocess.TimeoutExpired`` after ``timeout`` seconds; the caller kills the group.
    """
    deadline = started + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            ended = time.monotonic()
            proc.returncode = os.waitstatus_to_exitcode(status)
            return Finished(proc.returncode, ended - started, usage.ru_maxrss / 1024)
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def own_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
