"""The reference pool: the best plain-torch throughput here, and the headline denominator.

P spawned processes, one torch thread each, channels_last, batched decode and forward, model
warmed before the clock starts. It returns every image's probabilities so precision can be
compared on exactly the outputs that were timed.
"""

from __future__ import annotations

import contextlib
import logging
import queue as queue_mod
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from benchmarks.model import decode, load_model, preprocess

log = logging.getLogger(__name__)

PROCESSES = 2
BATCH = 8
START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class PoolRun:
    images: int
    seconds: float
    probs: np.ndarray  # (images, classes) float32, in corpus order


def _autocast(precision: str) -> contextlib.AbstractContextManager[object]:
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _child(
    weights: str,
    precision: str,
    tasks: mp.Queue,
    results: mp.Queue,
    barrier: Barrier,
) -> None:
    torch.set_num_threads(1)
    model = load_model(Path(weights)).to(memory_format=torch.channels_last)
    transform = preprocess()
    warm = torch.randn(BATCH, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), _autocast(precision):
        model(warm)
    barrier.wait()
    while (task := tasks.get()) is not None:
        start, paths = task
        x = torch.stack([decode(p, transform) for p in paths])
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), _autocast(precision):
            logits = model(x)
        results.put((start, logits.float().softmax(1).numpy()))


def run(
    paths: list[Path], weights: Path, precision: str = "fp32", timeout: float = 900.0
) -> PoolRun:
    ctx = mp.get_context("spawn")
    tasks = ctx.Queue()
    results = ctx.Queue()
    barrier = ctx.Barrier(PROCESSES + 1)
    batches = [(i, [str(p) for p in paths[i : i + BATCH]]) for i in range(0, len(paths), BATCH)]
    for batch in batches:
        tasks.put(batch)
    for _ in range(PROCESSES):
        tasks.put(None)
    procs = [
        ctx.Process(
            target=_child, args=(str(weights), precision, tasks, results, barrier), daemon=True
        )
        for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=START_TIMEOUT_S)
        t0 = time.monotonic()
        chunks: dict[int, np.ndarray] = {}
        deadline = t0 + timeout
        while len(chunks) < len(batches):
            if not all(p.is_alive() for p in procs) and results.empty():
                raise RuntimeError(
                    "a pool process died: " + ", ".join(str(p.exitcode) for p in procs)
                )
            try:
                start, probs = results.get(timeout=1.0)
            except queue_mod.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pool did not finish in {timeout:.0f} s") from None
                continue
            chunks[start] = probs
        seconds = time.monotonic() - t0
        for p in procs:
            p.join(timeout=10)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    probs = np.concatenate([chunks[k] for k in sorted(chunks)])
    return PoolRun(len(paths), seconds, probs)
