"""visionq end to end: ``visionq submit`` against a warm prefork worker, per precision and chunk."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from benchmarks import compare
from benchmarks.layout import relative
from benchmarks.redis_server import private_redis
from benchmarks.results import Row, error_row
from benchmarks.visionq_cli import (
    CONCURRENCY,
    busy_seconds,
    chunk_label,
    environment,
    read_topk,
    submit,
    worker,
)
from visionq.settings import Settings

log = logging.getLogger(__name__)

HEADLINE_CHUNK = Settings().chunk_size  # 0: what `visionq submit` uses by default (self-sizing)
WARMUP_IMAGES = 16


def _timeout(images: int) -> float:
    # Generous: 5 img/s is a tenth of the expected rate, but a stall must still end the run.
    return max(120.0, images / 5)


def run(
    paths: Sequence[Path],
    manifest: Path,
    weights: Path,
    workdir: Path,
    sweep: Sequence[int],
    pool_probs: dict[str, np.ndarray],
    emit: Callable[[Row], None],
) -> None:
    """Emit one throughput row per (precision, chunk size), then the precision comparisons."""
    outputs: dict[str, Path] = {}
    warmup = workdir / "warmup.txt"
    warmup.write_text("".join(f"{p.resolve()}\n" for p in paths[:WARMUP_IMAGES]))
    plan = {"fp32": list(sweep), "bf16": [HEADLINE_CHUNK], "int8": [HEADLINE_CHUNK]}
    for precision, chunks in plan.items():
        try:
            with (
                tempfile.TemporaryDirectory(prefix="bench-state-") as state,
                private_redis() as server,
            ):
                env = environment(server, weights, precision, Path(state))
                with worker(env, workdir / f"worker-{precision}.log") as w:
                    loads = [c.load_ms for c in w.ready]
                    log.info(
                        "%s worker ready after %.1f s (load_ms %s)",
                        precision,
                        w.ready[-1].seconds,
                        loads,
                    )
                    # The first job pays for connections and lazy imports; keep it off the clock.
                    submit(
                        env,
                        warmup,
                        workdir / "warmup.jsonl",
                        HEADLINE_CHUNK,
                        _timeout(WARMUP_IMAGES),
                    )
                    for chunk in chunks:
                        out = workdir / f"visionq-{precision}-chunk{chunk}.jsonl"
                        name = f"visionq {precision}, {chunk_label(chunk)}"
                        try:
                            sub = submit(env, manifest, out, chunk, _timeout(len(paths)))
                        except Exception as exc:  # one failed run must not end the sweep
                            emit(error_row("visionq", name, exc))
                            continue
                        note = (
                            ""
                            if sub.ok == len(paths)
                            else f"only {sub.ok} of {len(paths)} ok: {sub.log_tail}"
                        )
                        # Busy near 100% means the children never waited on the queue, so a
                        # low rate comes from compute (or other load), not from visionq.
                        busy = busy_seconds(out) / (CONCURRENCY * sub.finished.seconds)
                        emit(
                            Row(
                                "visionq",
                                name,
                                "ok" if sub.ok == len(paths) else "error",
                                images=sub.ok,
                                seconds=sub.finished.seconds,
                                figures={
                                    "precision": precision,
                                    "chunk": chunk,
                                    "children_busy_pct": round(100 * busy, 1),
                                },
                                note=note,
                            )
                        )
                        if chunk == HEADLINE_CHUNK:
                            outputs[precision] = out
        except Exception as exc:  # recorded as a row; the report goes on
            log.exception("visionq %s failed", precision)
            emit(error_row("visionq", f"visionq {precision}", exc))
    _precision_rows(paths, outputs, pool_probs, emit)


def _precision_rows(
    paths: Sequence[Path],
    outputs: dict[str, Path],
    pool_probs: dict[str, np.ndarray],
    emit: Callable[[Row], None],
) -> None:
    keys = [str(p.resolve()) for p in paths]
    topk = {prec: read_topk(out) for prec, out in outputs.items()}
    for prec, found in topk.items():
        if len(found) != len(keys):
            log.warning(
                "visionq %s returned %d of %d images; comparing those", prec, len(found), len(keys)
            )

    def rows_for(prec: str) -> tuple[list[int], list[list[tuple[int, float]]]]:
        idx = [i for i, k in enumerate(keys) if k in topk[prec]]
        return idx, [topk[prec][keys[i]] for i in idx]

    checks: list[tuple[str, Callable[[], compare.Agreement]]] = []
    for prec in ("fp32", "bf16"):
        if prec in topk and prec in pool_probs:
            idx, lists = rows_for(prec)
            checks.append(
                (
                    f"visionq {prec} vs reference pool {prec}",
                    lambda lists=lists, idx=idx, prec=prec: compare.topk_vs_probs(
                        lists, pool_probs[prec][idx]
                    ),
                )
            )
    for fast in ("bf16", "int8"):
        if "fp32" in topk and fast in topk:
            shared = [k for k in keys if k in topk["fp32"] and k in topk[fast]]
            checks.append(
                (
                    f"visionq {fast} vs visionq fp32 (top-5 lists)",
                    lambda shared=shared, fast=fast: compare.topk_vs_topk(
                        [topk[fast][k] for k in shared], [topk["fp32"][k] for k in shared]
                    ),
                )
            )
    for name, check in checks:
        try:
            emit(Row("accuracy", name, figures=dict(check().figures())))
        except Exception as exc:
            emit(error_row("accuracy", name, exc))
    for prec, out in outputs.items():
        log.info("visionq %s outputs kept in %s", prec, relative(out))
