"""``python -m workers.tune``: measure this host's levers on a sample of the user's images.

Run by ``visionq tune`` (the producer never imports torch). Reads one JSON request on
stdin, writes JSON lines on stdout: ``progress`` events while it measures, one
``result`` at the end. It starts as many measuring processes as the largest pool it
tries, each playing one pool child (its own torch threads, model and decoder), and
times every setting by running all its children at once for a fixed window, so the
figure includes the children's contention for cores and memory bandwidth.

The sweep is greedy and bounded: children x threads first (fp32, batch 8), then the
precision at the best layout, then the batch size, then fast JPEG decoding. Each step
keeps the fastest setting whose top-1 agreement with the exact fp32 path stays within
the tolerance, so at most about ten settings are timed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from visionq.settings import Settings

log = logging.getLogger(__name__)

WINDOW_S = 2.0  # timed window per setting; every child runs for it at once
BATCHES = (4, 8, 16, 32)


@dataclass(frozen=True)
class Setting:
    children: int
    threads: int
    precision: str = "fp32"
    batch: int = 8
    jpeg_draft: bool = False

    def label(self) -> str:
        draft = " draft" if self.jpeg_draft else ""
        return f"{self.children}x{self.threads} {self.precision} b{self.batch}{draft}"


def layouts(cores: int) -> list[tuple[int, int]]:
    """(children, threads) pairs that use every core without oversubscribing them."""
    pairs = []
    children = 1
    while children <= cores:
        if cores % children == 0:
            pairs.append((children, cores // children))
        children *= 2
    if (cores, 1) not in pairs:
        pairs.append((cores, 1))
    return pairs


# -- the measuring child -----------------------------------------------------------------


def _lab(conn: Any, weights: str, calibration: str, images: list[bytes]) -> None:
    """One stand-in pool child: answers ``run`` requests until told to stop."""
    import torch

    from workers import model as model_mod
    from workers.device import Placement
    from workers.inference import Classifier
    from workers.preprocess import Preprocessor
    from workers.quantize import calibration_tensors

    place = Placement("cpu", 1)
    max_pixels = Settings().max_image_pixels
    built: dict[str, Classifier] = {}

    def classifier(precision: str) -> Classifier:
        # model.load, as a pool child loads it: folded BatchNorm, channels_last, the fp32
        # head under bf16, or int8 quantization.
        if precision not in built:
            dtype = torch.bfloat16 if precision == "bf16" else None
            calib = None
            if precision == "int8":
                calib = calibration_tensors(calibration, Preprocessor(max_pixels=max_pixels))
            loaded = model_mod.load(
                weights, place, batch_size=8, autocast_dtype=dtype, int8_calibration=calib
            )
            built[precision] = Classifier(loaded.model, loaded.categories, place, dtype)
        return built[precision]

    classifier("fp32")
    conn.send("up")  # imported and built: the parent times nothing before every child is up
    while True:
        msg = conn.recv()
        if msg is None:
            return
        setting, want_top1 = msg
        torch.set_num_threads(setting.threads)
        clf = classifier(setting.precision)
        pre = Preprocessor(max_pixels=max_pixels, jpeg_draft=setting.jpeg_draft)

        def batch_of(i: int, n: int, pre: Preprocessor = pre) -> list[Any]:
            return [pre(io.BytesIO(images[(i + j) % len(images)]), "x") for j in range(n)]

        clf(batch_of(0, setting.batch), 1)  # warm this precision, threads and batch
        top1 = None
        if want_top1:
            top1 = []
            for i in range(0, len(images), setting.batch):
                n = min(setting.batch, len(images) - i)
                top1 += [t[0][0] for t in clf(batch_of(i, n), 1)]
        conn.send(top1)  # ready
        start_at, window = conn.recv()
        while time.time() < start_at:
            time.sleep(0.002)
        # Whole batches until the window is over; the rate is images over the time
        # those batches took, so a batch that ends past the window still counts fully.
        done = 0
        while time.time() < start_at + window or done == 0:
            clf(batch_of(done, setting.batch), 1)
            done += setting.batch
        conn.send(done / (time.time() - start_at))


class Lab:
    """``n`` measuring processes, started once and reused for every setting."""

    def __init__(self, n: int, weights: str, calibration: str, images: list[bytes]) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that may have run torch
        self.conns = []
        self.procs = []
        for _ in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_lab, args=(child, weights, calibration, images), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            conn.recv()

    def measure(self, setting: Setting, want_top1: bool) -> tuple[float, list[int] | None]:
        # Set-up (model build, int8 calibration, warm-up) stays off the clock: every
        # child reports ready, then all start together.
        conns = self.conns[: setting.children]
        for k, conn in enumerate(conns):
            conn.send((setting, want_top1 and k == 0))
        top1 = [conn.recv() for conn in conns][0]  # noqa: RUF015 - every child must answer
        start_at = time.time() + 0.05
        for conn in conns:
            conn.send((start_at, WINDOW_S))
        rate = sum(conn.recv() for conn in conns)
        return rate, top1

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()


# -- the sweep ---------------------------------------------------------------------------


@dataclass
class Measured:
    setting: Setting
    img_s: float
    agree_pct: float


def sweep(request: dict[str, Any], emit: Any) -> dict[str, Any]:
    """Time the settings greedily and return the rows and the recommendation."""
    from workers.errors import WeightsUnavailable
    from workers.model import build
    from workers.precision import cpu_supports_bf16

    images = [open(p, "rb").read() for p in request["paths"]]  # noqa: SIM115
    weights = request.get("weights") or "imagenet"
    try:
        build(weights)
    except WeightsUnavailable as exc:
        # Speed does not depend on the weights; agreement on random weights is a
        # lower bound (their probabilities are nearly flat).
        emit({"event": "note", "message": f"{exc}; measuring with random weights"})
        weights = "random"
    cores = int(request.get("cores") or os.cpu_count() or 1)
    tolerance = float(request.get("tolerance", 99.0))
    deadline = time.monotonic() + float(request.get("budget", 90.0))
    calibration = request.get("calibration") or ""
    pairs = layouts(cores)
    precisions = ["fp32"] + (["bf16"] if cpu_supports_bf16() else [])
    precisions += ["int8"] if calibration else []
    planned = len(pairs) + len(precisions) - 1 + len(BATCHES) - 1 + 1
    lab = Lab(max(c for c, _ in pairs), weights, calibration, images)
    rows: list[Measured] = []
    exact: list[int] = []
    top1_cache: dict[tuple[str, bool], float] = {}

    def run(setting: Setting) -> Measured | None:
        if rows and time.monotonic() > deadline:
            return None  # the exact path always runs: agreement needs it
        key = (setting.precision, setting.jpeg_draft)
        rate, top1 = lab.measure(setting, want_top1=key not in top1_cache)
        if top1 is not None:
            if not exact:
                exact.extend(top1)  # the first setting is the exact fp32 path
            same = sum(a == b for a, b in zip(top1, exact, strict=True))
            top1_cache[key] = 100.0 * same / len(exact)
        row = Measured(setting, rate, top1_cache[key])
        rows.append(row)
        emit({"event": "progress", "done": len(rows), "total": planned,
              "label": setting.label(), "img_s": round(rate, 1)})  # fmt: skip
        return row

    def best(candidates: list[Measured | None]) -> Measured:
        ok = [m for m in candidates if m is not None and m.agree_pct >= tolerance]
        return max(ok, key=lambda m: m.img_s)

    try:
        base = best([run(Setting(c, t)) for c, t in pairs])
        base = best([base] + [run(replace(base.setting, precision=p)) for p in precisions[1:]])
        base = best(
            [base]
            + [run(replace(base.setting, batch=b)) for b in BATCHES if b != base.setting.batch]
        )
        base = best([base, run(replace(base.setting, jpeg_draft=True))])
    finally:
        lab.close()
    return {
        "event": "result",
        "cores": cores,
        "images": len(images),
        "tolerance": tolerance,
        "rows": [
            {**asdict(m.setting), "img_s": round(m.img_s, 1), "agree_pct": round(m.agree_pct, 1)}
            for m in rows
        ],
        "best": asdict(base.setting),
        "weights": weights,
        "timed_out": time.monotonic() > deadline,
    }


def main() -> int:
    request = json.loads(sys.stdin.read())
    # Events own stdout; anything libraries print goes to stderr instead.
    events = sys.stdout
    sys.stdout = sys.stderr

    def emit(event: dict[str, Any]) -> None:
        events.write(json.dumps(event) + "\n")
        events.flush()

    try:
        emit(sweep(request, emit))
    except Exception as exc:
        emit({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
