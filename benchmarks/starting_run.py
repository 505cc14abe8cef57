"""Runs the starting design in a subprocess under a deadline and reads its progress lines."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks import starting_design
from benchmarks.procs import kill_group, spawn
from benchmarks.results import Row

log = logging.getLogger(__name__)

# After the last image a worker may sit in queue.get() forever (the empty()/get() race);
# give the script this long to exit on its own before calling it stuck.
EXIT_GRACE_S = 10.0


class _Progress:
    """Timestamps of the START marker and of each finished image, read from the child's stdout."""

    def __init__(self, stream: object) -> None:
        self.started: float | None = None
        self.done: list[float] = []
        self.tail: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for raw in stream:  # type: ignore[attr-defined]
            line = raw.decode(errors="replace").rstrip()
            now = time.monotonic()
            if line.startswith(starting_design.START_MARKER):
                self.started = now
            elif line.startswith(starting_design.DONE_PREFIX):
                self.done.append(now)
            else:
                self.tail = ([*self.tail, line])[-5:]


def run(method: str, manifest: Path, weights: Path, images: int, timeout: float) -> Row:
    name = f"starting design ({method})"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "benchmarks.starting_design", method, str(manifest), str(weights)]
    proc = spawn(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    progress = _Progress(proc.stdout)
    launched = time.monotonic()
    try:
        # The deadline covers only the work after START, so slow imports do not count as a hang.
        while proc.poll() is None and len(progress.done) < images:
            clock = progress.started or launched
            if time.monotonic() - clock > timeout:
                break
            time.sleep(0.05)
        finished = len(progress.done)
        if finished < images:
            if proc.poll() is not None:
                note = f"exited {proc.returncode} after {finished} images: " + " | ".join(
                    progress.tail
                )
                return Row("baseline", name, "error", images=finished, note=note)
            return Row(
                "baseline",
                name,
                "hung",
                images=finished,
                seconds=timeout,
                figures={"finished": finished},
                note=f"{finished} of {images} images in {timeout:.0f} s; killed",
            )
        assert progress.started is not None
        seconds = progress.done[-1] - progress.started
        note = ""
        try:
            proc.wait(timeout=EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            note = (
                f"all images done but the script did not exit within {EXIT_GRACE_S:.0f} s "
                "(queue.empty()/get() race)"
            )
        return Row("baseline", name, images=images, seconds=seconds, note=note)
    finally:
        kill_group(proc)
