"""``visionq tune``: find the fastest settings for this host on the user's own images.

The measuring runs in a child process with the worker package (``python -m
workers.tune``), because the producer never imports torch. This module picks the
sample, drives the child within a time budget, shows a progress bar, and prints the
table and the recommendation as ``export VISIONQ_...=`` lines to copy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from producer.errors import ProducerError


class TuneFailed(ProducerError):
    """The measuring child could not run or reported an error."""


@dataclass
class Recommendation:
    children: int
    threads: int
    precision: str
    batch: int
    jpeg_draft: bool

    def env(self, calibration: str = "") -> dict[str, str]:
        env = {
            "VISIONQ_THREADS": str(self.threads),
            "VISIONQ_PRECISION": self.precision,
            "VISIONQ_BATCH_SIZE": str(self.batch),
            "VISIONQ_JPEG_DRAFT": "1" if self.jpeg_draft else "0",
        }
        if self.precision == "int8" and calibration:
            env["VISIONQ_INT8_CALIBRATION"] = os.path.abspath(calibration)
        return env


def sample(paths: Iterable[str], size: int) -> list[str]:
    """Up to ``size`` paths spread evenly over the input, in input order."""
    every = list(paths)
    if len(every) <= size:
        return every
    step = len(every) / size
    return [every[int(i * step)] for i in range(size)]


def measure(
    paths: Sequence[str],
    *,
    weights: str,
    calibration: str,
    tolerance: float,
    budget: float,
    quiet: bool,
) -> dict[str, Any]:
    """Run the measuring child and return its result event."""
    request = {
        "paths": [os.path.abspath(p) for p in paths],
        "weights": weights,
        "calibration": os.path.abspath(calibration) if calibration else "",
        "tolerance": tolerance,
        "budget": budget,
        "cores": os.cpu_count() or 1,
    }
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.tune"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
    except OSError as exc:
        raise TuneFailed(f"cannot start the measuring process: {exc}") from exc
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(request))
    proc.stdin.close()
    bar = None if quiet else tqdm(total=1, unit="setting", desc="tune", file=sys.stderr)
    result: dict[str, Any] | None = None
    try:
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # not an event: stray output of a library
            kind = event.get("event")
            if kind == "progress" and bar is not None:
                bar.total = event["total"]
                bar.set_postfix_str(f"{event['label']}: {event['img_s']} img/s")
                bar.update(event["done"] - bar.n)
            elif kind == "note":
                tqdm.write(f"note: {event['message']}", file=sys.stderr)
            elif kind == "error":
                raise TuneFailed(event["message"])
            elif kind == "result":
                result = event
    finally:
        if bar is not None:
            bar.close()
        proc.wait()
    if result is None:
        raise TuneFailed(
            f"the measuring process exited {proc.returncode} without a result "
            "(is the worker package installed? pip install -e '.[worker]')"
        )
    return result


def render(result: dict[str, Any], calibration: str = "") -> str:
    """The table of every setting timed, then the recommendation as lines to copy."""
    rows = result["rows"]
    best = Recommendation(**result["best"])
    # What a worker runs without tuning: one child per core, fp32, batch 8.
    default = next(
        (r["img_s"] for r in rows if r["children"] == result["cores"] and r["threads"] == 1
         and r["precision"] == "fp32" and r["batch"] == 8 and not r["jpeg_draft"]),
        0.0,
    )  # fmt: skip
    lines = [
        f"{result['images']} images, {result['cores']} cores; top-1 agreement is with the "
        f"exact fp32 path (weights: {result.get('weights', '?')})",
        "",
        f"{'children x threads':>18}  {'precision':>9}  {'batch':>5}  {'jpeg draft':>10}  "
        f"{'img/s':>7}  {'top-1 agree':>11}",
    ]
    best_rate: float | None = None  # the first row with the recommended settings
    for r in rows:
        is_best = {k: r[k] for k in result["best"]} == result["best"]
        if is_best and best_rate is None:
            best_rate = r["img_s"]
        mark = " <" if is_best else ""
        lines.append(
            f"{r['children']:>13} x {r['threads']:<2}  {r['precision']:>9}  {r['batch']:>5}  "
            f"{'on' if r['jpeg_draft'] else 'off':>10}  {r['img_s']:>7.1f}  "
            f"{r['agree_pct']:>10.1f}%{mark}"
        )
    best_rate = best_rate or 0.0
    lines += [
        "",
        f"fastest within {result['tolerance']:g}% top-1 agreement: {best_rate:.1f} img/s"
        + (f" ({best_rate / default:.2f}x the defaults)" if default else ""),
    ]
    if result.get("timed_out"):
        lines.append("(the time budget ran out; settings not timed were not considered)")
    lines += ["", *[f"export {k}={v}" for k, v in best.env(calibration).items()]]
    lines.append(f"# start workers with {best.children} pool children:")
    lines.append(f"celery -A workers worker -P prefork -c {best.children}")
    return "\n".join(lines)
