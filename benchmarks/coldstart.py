"""Cold start: from launching ``celery worker`` to the first result of a one-image job."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.redis_server import private_redis
from benchmarks.results import Row, error_row
from benchmarks.visionq_cli import READY_TIMEOUT_S, environment, submit, worker

log = logging.getLogger(__name__)


def run(image: Path, weights: Path, workdir: Path, emit: Callable[[Row], None]) -> None:
    manifest = workdir / "one-image.txt"
    manifest.write_text(f"{image.resolve()}\n")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-state-") as state, private_redis() as server:
            env = environment(server, weights, "fp32", Path(state))
            with worker(env, workdir / "worker-coldstart.log", wait=False) as w:
                # Submitted at once, like a first job: it waits in Redis until a child is warm.
                with w.watching():
                    first = submit(env, manifest, workdir / "coldstart.jsonl", 1, READY_TIMEOUT_S)
                    first_result_s = time.monotonic() - w.launched
                w.wait_ready()
                warm = submit(env, manifest, workdir / "warm-one.jsonl", 1, 60.0)
            loads = [c.load_ms for c in w.ready]
            emit(
                Row(
                    "coldstart",
                    "worker launch to first result (1 image)",
                    "ok" if first.ok == 1 else "error",
                    seconds=first_result_s,
                    figures={
                        "first_result_s": round(first_result_s, 2),
                        "first_child_ready_s": round(min(c.seconds for c in w.ready), 2),
                        "children_ready_s": round(max(c.seconds for c in w.ready), 2),
                        "child_load_ms": "/".join(f"{x:.0f}" for x in loads if x is not None),
                        "warm_1image_job_s": round(warm.finished.seconds, 2),
                    },
                    note="" if first.ok == 1 else first.log_tail,
                )
            )
    except Exception as exc:  # recorded as a row
        log.exception("cold start benchmark failed")
        emit(error_row("coldstart", "worker launch to first result (1 image)", exc))
