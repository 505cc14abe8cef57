"""Queue overhead at scale: a large manifest of missing files, so the model never runs.

What is left is the cost of publishing, routing, error results and collection: the
producer's rate and memory, and what the job leaves in Redis.
"""

from __future__ import annotations

import logging
import re
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.redis_server import RedisServer, private_redis
from benchmarks.results import Row, error_row
from benchmarks.visionq_cli import chunk_label, environment, submit, worker

log = logging.getLogger(__name__)

SAMPLE_EVERY_S = 0.1
_SUMMARY = re.compile(r" in ([0-9.]+) s, [0-9.,]+ img/s")
# The slowest job allowed: 10M paths at a fifth of the target rate.
TIMEOUT_S = 1000.0


def write_missing_manifest(count: int, target: Path) -> Path:
    """``count`` paths that do not exist, one per line (written once, then reused)."""
    done = target.with_suffix(".complete")
    if not done.exists():
        with target.open("w") as fh:
            for start in range(0, count, 100_000):
                stop = min(count, start + 100_000)
                fh.write("".join(f"/nonexistent/bench/img_{i:08d}.jpg\n"
                                 for i in range(start, stop)))  # fmt: skip
        done.touch()
    return target


def _reported_seconds(log_tail: str) -> float | None:
    """The job time in the producer's own summary line, which excludes its start-up."""
    match = _SUMMARY.search(log_tail)
    return float(match.group(1)) if match else None


class _MemorySampler:
    """Polls Redis ``used_memory`` in a thread and keeps the peak."""

    def __init__(self, server: RedisServer) -> None:
        self._client = server.client()
        self._stop = threading.Event()
        self.peak = self.used()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def used(self) -> int:
        return int(self._client.info("memory")["used_memory"])

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            try:
                self.peak = max(self.peak, self.used())
            except Exception:  # a missed sample only lowers the peak slightly
                log.debug("memory sample failed", exc_info=True)

    def __enter__(self) -> _MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _label(count: int) -> str:
    if count % 1_000_000 == 0:
        return f"{count // 1_000_000}M"
    return f"{count // 1000}k" if count % 1000 == 0 else str(count)


def run(
    counts: Sequence[int],
    chunk_sizes: Sequence[int],
    weights: Path,
    workdir: Path,
    emit: Callable[[Row], None],
) -> None:
    """One row per (job size, chunk size); chunk 0 is the default (self-sized chunks)."""
    for count in counts:
        _run_one(count, chunk_sizes, weights, workdir, emit)


def _run_one(
    count: int,
    chunk_sizes: Sequence[int],
    weights: Path,
    workdir: Path,
    emit: Callable[[Row], None],
) -> None:
    manifest = write_missing_manifest(count, workdir / f"missing-{count}.txt")
    label = _label(count)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-state-") as state, private_redis() as server:
            env = environment(server, weights, "fp32", Path(state))
            with worker(env, workdir / "worker-scale.log"):
                results_db = server.client(1)
                for chunk in chunk_sizes:
                    name = f"{label} missing paths, {chunk_label(chunk)}"
                    try:
                        keys_before = int(results_db.dbsize())
                        with _MemorySampler(server) as mem:
                            before = mem.used()
                            sub = submit(
                                env,
                                manifest,
                                workdir / f"scale-{label}-chunk{chunk}.jsonl",
                                chunk,
                                TIMEOUT_S,
                            )
                            after = mem.used()
                    except Exception as exc:  # recorded as a row
                        emit(error_row("scale", name, exc))
                        continue
                    keys_after = int(results_db.dbsize())
                    mb = 1 / (1024 * 1024)
                    note = (
                        ""
                        if sub.records == count
                        else f"{sub.records} of {count} records: {sub.log_tail}"
                    )
                    emit(
                        Row(
                            "scale",
                            name,
                            "ok" if sub.records == count else "error",
                            images=sub.records,
                            seconds=sub.finished.seconds,
                            figures={
                                "chunk": chunk,
                                "paths_per_s": round(sub.rate),
                                "producer_reported_s": _reported_seconds(sub.log_tail),
                                "producer_peak_rss_mb": round(sub.finished.max_rss_mb, 1),
                                "redis_before_mb": round(before * mb, 2),
                                "redis_peak_mb": round(mem.peak * mb, 2),
                                "redis_after_mb": round(after * mb, 2),
                                "redis_growth_mb": round((mem.peak - before) * mb, 2),
                                "results_db_keys_after": keys_after,
                                "results_db_keys_added": keys_after - keys_before,
                                "broker_db_keys_after": int(server.client(0).dbsize()),
                            },
                            note=note,
                            unit="paths/s",
                        )
                    )
    except Exception as exc:
        log.exception("queue scale benchmark failed")
        emit(error_row("scale", f"{label} missing paths", exc))
