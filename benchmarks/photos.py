"""Camera-sized photos: 12 MP JPEGs through the reference pool and visionq's paths.

Phone and camera photos are 4032x3024. On them decoding is most of the cost, so this
group measures what the 300-500 px corpus cannot: the exact default path against the
pool on the same photos, and the opt-in fast decoding (``VISIONQ_JPEG_DRAFT``) with and
without int8. Each visionq row carries its top-1 agreement with the exact fp32 path
(the pool's fp32 outputs on the same photos).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import corpus, pool
from benchmarks.layout import BENCH_DIR
from benchmarks.redis_server import private_redis
from benchmarks.results import Row, error_row
from benchmarks.visionq_cli import environment, read_topk, submit, worker
from visionq.settings import Settings

log = logging.getLogger(__name__)

PHOTOS_DIR = BENCH_DIR / "photos"
# Enough photos that self-sized chunks give both children whole chunks, so a
# job's tail (one child busy, the other idle) does not decide the figure.
PHOTOS = 64
SIZE = (4032, 3024)
NOISE_SIGMA = 6.0  # sensor noise in 8-bit levels; it is what makes photo files 2-4 MB
QUALITY = 90
POOL_NAME = "reference pool fp32 on 12 MP photos"
CHUNK = Settings().chunk_size  # 0: self-sized chunks, the default
# (row name, precision, VISIONQ_JPEG_DRAFT)
CONTENDERS = (
    ("visionq fp32 on 12 MP photos (default)", "fp32", False),
    ("visionq fp32 + VISIONQ_JPEG_DRAFT on 12 MP photos", "fp32", True),
    ("visionq int8 on 12 MP photos", "int8", False),
    ("visionq int8 + VISIONQ_JPEG_DRAFT on 12 MP photos", "int8", True),
)


def make_photo(index: int, seed: int = corpus.SEED) -> Image.Image:
    """Photo ``index``: a corpus image upscaled to 12 MP, with sensor-like noise."""
    small = corpus.make_image(index, seed)
    size = SIZE if small.width >= small.height else SIZE[::-1]
    big = small.resize(size, Image.Resampling.BICUBIC)
    rng = np.random.default_rng([seed, index, 12])
    arr = np.asarray(big, dtype=np.float32)
    arr += rng.normal(0.0, NOISE_SIGMA, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def build(count: int = PHOTOS, folder: Path = PHOTOS_DIR) -> list[Path]:
    """Ensure photos ``0..count-1`` exist (built once, ~0.5 s each); return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"photo_{i:04d}.jpg" for i in range(count)]
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    if missing:
        log.info("building %d of %d 12 MP photos in %s", len(missing), count, folder.name)
    for i in missing:
        tmp = paths[i].with_suffix(".tmp")
        make_photo(i).save(tmp, format="JPEG", quality=QUALITY)
        os.replace(tmp, paths[i])
    return paths


def top1_agreement(found: dict[str, list[tuple[int, float]]], keys: Sequence[str],
                   exact: np.ndarray) -> float | None:  # fmt: skip
    """Percent of ``keys`` whose top-1 matches the exact path's; None if none came back."""
    pairs = [(found[k][0][0], int(exact[i].argmax())) for i, k in enumerate(keys) if k in found]
    if not pairs:
        return None
    return 100.0 * sum(a == b for a, b in pairs) / len(pairs)


def run(weights: Path, workdir: Path, emit: Callable[[Row], None],
        count: int = PHOTOS) -> None:  # fmt: skip
    """Emit the pool row, then one row per visionq contender, each with its agreement."""
    paths = build(count)
    keys = [str(p.resolve()) for p in paths]
    manifest = corpus.write_manifest(paths, BENCH_DIR / f"manifest-photos-{count}.txt")
    try:
        ref = pool.run(list(paths), weights, "fp32")
    except Exception as exc:
        log.exception("pool on photos failed")
        emit(error_row("photos", POOL_NAME, exc))
        return
    emit(Row("photos", POOL_NAME, images=ref.images, seconds=ref.seconds,
             figures={"precision": "fp32", "top1_agree_pct": 100.0}))  # fmt: skip
    timeout = max(120.0, count * 2.0)
    for name, precision, draft in CONTENDERS:
        try:
            with (
                tempfile.TemporaryDirectory(prefix="bench-state-") as state,
                private_redis() as server,
            ):
                env = environment(server, weights, precision, Path(state))
                if draft:
                    env["VISIONQ_JPEG_DRAFT"] = "1"
                tag = f"photos-{precision}{'-draft' if draft else ''}"
                with worker(env, workdir / f"worker-{tag}.log"):
                    # One photo per child first, off the clock: connections, lazy imports.
                    warm = workdir / f"warmup-{tag}.txt"
                    warm.write_text("".join(f"{k}\n" for k in keys[:2]))
                    submit(env, warm, workdir / f"warmup-{tag}.jsonl", CHUNK, timeout)
                    out = workdir / f"visionq-{tag}.jsonl"
                    sub = submit(env, manifest, out, CHUNK, timeout)
            agree = top1_agreement(read_topk(out), keys, ref.probs)
            emit(
                Row(
                    "photos",
                    name,
                    "ok" if sub.ok == count else "error",
                    images=sub.ok,
                    seconds=sub.finished.seconds,
                    figures={"precision": precision, "jpeg_draft": int(draft),
                             "top1_agree_pct": round(agree, 1) if agree is not None else None},
                    note="" if sub.ok == count else f"only {sub.ok} of {count} ok: {sub.log_tail}",
                )
            )  # fmt: skip
        except Exception as exc:  # one failed contender must not end the group
            log.exception("%s failed", name)
            emit(error_row("photos", name, exc))
