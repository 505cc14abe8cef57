"""Helpers shared by the fault, hostile-input and security tests.

Everything here is bounded in time: every wait has a deadline and says what it was
waiting for when it runs out.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from tests.conftest import ROOT, SAMPLES, VISIONQ

FAULTINJECT = str(ROOT / "tests" / "faultinject")


def make_corpus(dest: Path, n: int, *, size: int = 96, seed: int = 0,
                names: Callable[[int], str] = "img{:04d}.jpg".format) -> list[str]:  # fmt: skip
    """``n`` distinct small JPEGs: random crops of the sample photos, one seed each.

    Decoding them is cheap, so a job's time is the forward pass, as in production.
    """
    dest.mkdir(parents=True, exist_ok=True)
    photos = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))]
    paths = []
    for i in range(n):
        rng = random.Random(seed * 1_000_003 + i)
        photo = photos[rng.randrange(len(photos))]
        side = rng.randint(size, min(photo.size))
        x = rng.randint(0, photo.width - side)
        y = rng.randint(0, photo.height - side)
        img = photo.crop((x, y, x + side, y + side)).resize((size, size))
        path = dest / names(i)
        img.save(path, "JPEG", quality=85)
        paths.append(str(path))
    return paths


def write_list(path: Path, paths: Iterable[str]) -> str:
    path.write_text("".join(p + "\n" for p in paths))
    return str(path)


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def line_count(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for _ in fh)
    except FileNotFoundError:
        return 0


def tally(label: str, records: Sequence[dict[str, Any]], expected: Iterable[str],
          seconds: float | None = None) -> tuple[int, int]:  # fmt: skip
    """(lost, duplicated) results; printed, so ``pytest -s`` shows the figures."""
    want = set(expected)
    seen = Counter(r["path"] for r in records)
    lost = len(want - set(seen))
    dups = sum(n - 1 for n in seen.values() if n > 1)
    stray = len(set(seen) - want)
    took = f" seconds={seconds:.1f}" if seconds is not None else ""
    print(f"\nFIGURE {label}: images={len(want)} lines={len(records)} lost={lost} "
          f"duplicates={dups} stray={stray}{took}")  # fmt: skip
    assert stray == 0, f"{stray} results for paths that were never submitted"
    return lost, dups


def assert_exactly_once(label: str, records: Sequence[dict[str, Any]], expected: Iterable[str],
                        seconds: float | None = None) -> None:  # fmt: skip
    lost, dups = tally(label, records, expected, seconds)
    assert (lost, dups) == (0, 0), f"{label}: {lost} lost, {dups} duplicated"


def wait_until(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def pool_children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the prefork pool), from /proc."""
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(c) for c in fh.read().split()]
    except FileNotFoundError:
        pass
    return sorted(set(out))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def visionq(args: Sequence[str], env: dict[str, str], **kw: Any) -> subprocess.Popen:
    """The CLI as a child process in its own process group (so a kill takes it all)."""
    return subprocess.Popen(
        [*VISIONQ, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True, cwd=str(ROOT), **kw,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    """Wait for a CLI run; on timeout kill it and fail with what it printed."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"visionq did not finish in {timeout:g} s:\n{err[-3000:]}") from None
    return proc.returncode, out, err


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
