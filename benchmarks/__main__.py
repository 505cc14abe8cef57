"""``python -m benchmarks``: build the corpus, run the chosen benchmarks, write the report."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks import (
    baselines,
    coldstart,
    corpus,
    machine,
    photos,
    queue_scale,
    remote_http,
    report,
    results,
    visionq_e2e,
)
from benchmarks.layout import (
    BENCH_DIR,
    CORPUS_DIR,
    DEFAULT_REPORT,
    RESULTS_PATH,
    WEIGHTS_PATH,
    relative,
    tool,
)
from benchmarks.model import ensure_weights
from benchmarks.redis_server import find_binary
from benchmarks.results import Row

log = logging.getLogger("benchmarks")

GROUPS = ("pool", "starting", "visionq", "scale", "coldstart", "remote", "photos")
VISIONQ_GROUPS = ("visionq", "scale", "coldstart", "remote", "photos")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _groups(text: str) -> list[str]:
    chosen = [g.strip() for g in text.split(",") if g.strip()]
    unknown = sorted(set(chosen) - set(GROUPS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}"
        )
    return chosen


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--images", type=int, default=None, help="corpus size (default 1000, 64 with --quick)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: small corpus, short deadlines (~3 min)"
    )
    parser.add_argument(
        "--only",
        type=_groups,
        default=list(GROUPS),
        help=f"comma-separated subset of {','.join(GROUPS)}",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_REPORT, help="Markdown report; the chart goes beside it"
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS_PATH, help="raw figures (JSON) of the run"
    )
    parser.add_argument(
        "--sweep",
        type=_ints,
        default=None,
        help="visionq fp32 chunk sizes; 0 is self-sizing, the default (default 0,16,128)",
    )
    parser.add_argument(
        "--scale-paths",
        type=_ints,
        default=None,
        help="missing-path job sizes (default 1000000,10000000)",
    )
    parser.add_argument(
        "--scale-chunks",
        type=_ints,
        default=[0],
        help="chunk sizes for the missing-path jobs; 0 is self-sizing (default 0)",
    )
    parser.add_argument(
        "--hang-timeout",
        type=float,
        default=None,
        help="seconds before the fork design counts as hung (default 75)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the report from the last run's raw figures without measuring anything",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.images = args.images or (64 if args.quick else 1000)
    args.sweep = args.sweep or ([0, 16] if args.quick else [0, 16, 128])
    args.scale_paths = args.scale_paths or ([10_000] if args.quick else [1_000_000, 10_000_000])
    args.hang_timeout = args.hang_timeout or (20.0 if args.quick else 75.0)
    return args


def _pool_cache(precision: str, images: int) -> Path:
    return BENCH_DIR / f"pool-probs-{precision}-{images}.npy"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.report_only:
        rows, meta = results.load(args.results)
        png = report.write(rows, meta, args.out)
        print(f"report: {relative(args.out)}, chart: {relative(png)}")
        return 0

    started = time.monotonic()
    load_at_start = os.getloadavg()[0]
    rows: list[Row] = []

    def emit(row: Row) -> None:
        row.load = os.getloadavg()[0]
        rows.append(row)
        print(row.console(), flush=True)

    paths = corpus.build(args.images, CORPUS_DIR)
    manifest = corpus.write_manifest(paths, BENCH_DIR / f"manifest-{args.images}.txt")
    weights = ensure_weights(WEIGHTS_PATH)
    workdir = BENCH_DIR / "runs"
    workdir.mkdir(parents=True, exist_ok=True)
    log.info(
        "corpus: %d images in %s; weights %s", len(paths), relative(CORPUS_DIR), relative(weights)
    )

    pool_probs: dict[str, np.ndarray] = {}
    if "pool" in args.only:
        pool_probs = baselines.run_pool(paths, weights, emit)
        for precision, probs in pool_probs.items():
            np.save(_pool_cache(precision, args.images), probs)
    else:
        # Outputs are deterministic, so an earlier run's still serve the precision checks.
        for precision in ("fp32", "bf16"):
            if _pool_cache(precision, args.images).exists():
                pool_probs[precision] = np.load(_pool_cache(precision, args.images))

    if "starting" in args.only:
        baselines.run_starting_design(manifest, weights, args.images, args.hang_timeout, emit)

    wanted = [g for g in VISIONQ_GROUPS if g in args.only]
    if wanted and not (tool("celery") and tool("visionq")):
        for group in wanted:
            emit(
                Row(group, "visionq", "skipped", note="visionq is not installed (pip install -e .)")
            )
        wanted = []
    steps: dict[str, Callable[[], None]] = {
        "visionq": lambda: visionq_e2e.run(
            paths, manifest, weights, workdir, args.sweep, pool_probs, emit
        ),
        "scale": lambda: queue_scale.run(
            args.scale_paths, args.scale_chunks, weights, workdir, emit
        ),
        "coldstart": lambda: coldstart.run(paths[0], weights, workdir, emit),
        "remote": lambda: remote_http.run(paths, weights, workdir, emit),
        "photos": lambda: photos.run(
            weights, workdir, emit, count=photos.PHOTOS // 2 if args.quick else photos.PHOTOS
        ),
    }
    for group in wanted:
        steps[group]()

    try:
        redis_binary: str | None = find_binary()
    except RuntimeError:
        redis_binary = None
    meta = {
        "machine": machine.describe(redis_binary),
        "images": args.images,
        "load_at_start": load_at_start,
        "command": "python -m benchmarks " + shlex.join(argv) if argv else "python -m benchmarks",
        "wall_s": time.monotonic() - started,
    }
    results.dump(rows, meta, args.results)
    png = report.write(rows, meta, args.out)
    print(f"report: {relative(args.out)}, chart: {relative(png)}")
    print(f"raw figures: {relative(args.results)}")
    print(f"total {meta['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
