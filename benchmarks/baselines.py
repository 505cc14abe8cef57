"""In-process contenders on the shared corpus and weights: starting design, reference pool."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from benchmarks import compare, pool, starting_run
from benchmarks.results import Row, error_row

log = logging.getLogger(__name__)

POOL_NAME = "reference pool {precision} (2 spawned x 1 thread, batch 8, channels_last)"


def pool_name(precision: str) -> str:
    return POOL_NAME.format(precision=precision)


def run_starting_design(
    manifest: Path, weights: Path, images: int, hang_timeout: float, emit: Callable[[Row], None]
) -> None:
    # spawn gets a deadline sized to its expected ~9 img/s, with a wide margin for a busy machine.
    for method, timeout in (("fork", hang_timeout), ("spawn", max(60.0, images / 2))):
        name = f"starting design ({method})"
        try:
            emit(starting_run.run(method, manifest, weights, images, timeout))
        except Exception as exc:  # recorded as a row; the report goes on
            log.exception("%s failed", name)
            emit(error_row("baseline", name, exc))


def run_pool(
    paths: Sequence[Path], weights: Path, emit: Callable[[Row], None]
) -> dict[str, np.ndarray]:
    """Both precisions of the reference pool, then their agreement; returns probs by precision."""
    probs: dict[str, np.ndarray] = {}
    for precision in ("fp32", "bf16"):
        try:
            result = pool.run(list(paths), weights, precision)
        except Exception as exc:
            log.exception("pool %s failed", precision)
            emit(error_row("baseline", pool_name(precision), exc))
            continue
        probs[precision] = result.probs
        emit(
            Row(
                "baseline",
                pool_name(precision),
                images=result.images,
                seconds=result.seconds,
                figures={"precision": precision},
            )
        )
    if len(probs) == 2:
        agreement = compare.probs_vs_probs(probs["bf16"], probs["fp32"])
        emit(
            Row(
                "accuracy",
                "reference pool bf16 vs fp32 (all classes)",
                figures=dict(agreement.figures()),
            )
        )
    return probs
