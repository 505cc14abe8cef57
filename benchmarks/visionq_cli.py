"""Drives the real visionq system: a Celery prefork worker and the ``visionq submit`` CLI."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import corpus
from benchmarks.layout import CALIBRATION_DIR, ROOT, tool
from benchmarks.procs import Finished, kill_group, run_measured, spawn
from benchmarks.redis_server import RedisServer
from visionq.records import READY_MARK

log = logging.getLogger(__name__)

CONCURRENCY = 2
READY_TIMEOUT_S = 240.0
_LOAD_MS = re.compile(r"load_ms=([0-9.]+)")


def require_tools() -> tuple[str, str]:
    celery, visionq = tool("celery"), tool("visionq")
    if not celery or not visionq:
        raise RuntimeError("the celery and visionq commands are not installed (pip install -e .)")
    return celery, visionq


def environment(
    server: RedisServer, weights: Path, precision: str, state_dir: Path
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONQ_")}
    env.update(
        VISIONQ_BROKER_URL=server.url(0),
        VISIONQ_RESULT_BACKEND=server.url(1),
        VISIONQ_WEIGHTS=str(weights.resolve()),
        VISIONQ_PRECISION=precision,
        VISIONQ_STATE_DIR=str(state_dir),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    if precision == "int8":
        env["VISIONQ_INT8_CALIBRATION"] = str(calibration_folder())
    return env


def calibration_folder() -> Path:
    """64 images from the corpus generator with another seed: never measured, only seen."""
    corpus.build(64, CALIBRATION_DIR, seed=corpus.SEED + 1)
    return CALIBRATION_DIR


@dataclass
class ChildReady:
    seconds: float  # since the worker was launched, as seen by polling its log
    load_ms: float | None


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log_path: Path
    launched: float
    ready: list[ChildReady] = field(default_factory=list)

    def poll_ready(self) -> int:
        lines = [
            ln for ln in self.log_path.read_text(errors="replace").splitlines() if READY_MARK in ln
        ]
        now = time.monotonic() - self.launched
        for line in lines[len(self.ready) :]:
            match = _LOAD_MS.search(line)
            self.ready.append(ChildReady(now, float(match.group(1)) if match else None))
        return len(self.ready)

    def wait_ready(self, children: int = CONCURRENCY, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = self.launched + timeout
        while self.poll_ready() < children:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(self.ready)} of {children} children ready after {timeout:.0f} s"
                )
            time.sleep(0.05)

    @contextmanager
    def watching(self, every: float = 0.05) -> Iterator[None]:
        """Poll the log in a thread, so ready times stay accurate while the caller is blocked."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every):
                self.poll_ready()

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    def log_tail(self, lines: int = 8) -> str:
        return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def worker(env: dict[str, str], log_path: Path, wait: bool = True) -> Iterator[Worker]:
    """A prefork worker in its own process group; with ``wait``, yielded when children are warm."""
    celery, _ = require_tools()
    cmd = [
        celery, "-A", "workers", "worker", "-P", "prefork", "-c", str(CONCURRENCY),
        "--loglevel=INFO", "-n", "bench@%h",
    ]  # fmt: skip
    with open(log_path, "wb") as out:
        launched = time.monotonic()
        proc = spawn(cmd, env=env, stdout=out)
    handle = Worker(proc, log_path, launched)
    try:
        if wait:
            handle.wait_ready()
        yield handle
    finally:
        kill_group(proc, grace=10.0)


@dataclass(frozen=True)
class Submitted:
    finished: Finished
    records: int
    ok: int
    log_tail: str

    @property
    def rate(self) -> float:
        return self.records / self.finished.seconds if self.finished.seconds else 0.0


def submit(
    env: dict[str, str],
    manifest: Path,
    out: Path,
    chunk_size: int,
    timeout: float,
    top_k: int = 5,
) -> Submitted:
    """Time ``visionq submit`` from launch to exit and count the records it wrote.

    ``chunk_size`` 0 leaves the size to visionq (self-sizing chunks, the default).
    """
    _, visionq = require_tools()
    out.unlink(missing_ok=True)
    cmd = [
        visionq, "submit", "--from-file", str(manifest), "--out", str(out),
        "--top-k", str(top_k),
    ]  # fmt: skip
    if chunk_size:
        cmd += ["--chunk-size", str(chunk_size)]
    log_path = out.with_suffix(".log")
    try:
        finished = run_measured(cmd, env=env, log_path=log_path, timeout=timeout)
    except subprocess.TimeoutExpired:
        records, _ = count_records(out)
        raise TimeoutError(
            f"visionq submit ran over {timeout:.0f} s ({records} records written)"
        ) from None
    records, ok = count_records(out)
    tail = " | ".join(log_path.read_text(errors="replace").splitlines()[-6:])
    if finished.returncode != 0 and records == 0:
        raise RuntimeError(f"visionq submit exited {finished.returncode}: {tail}")
    return Submitted(finished, records, ok, tail)


def chunk_label(chunk_size: int) -> str:
    """How a row names its chunk size: 0 is visionq's own choice."""
    return f"chunk {chunk_size}" if chunk_size else "self-sized chunks"


def count_records(out: Path) -> tuple[int, int]:
    """Records and successful records in a JSONL output, tolerating a half-written last line."""
    if not out.exists():
        return 0, 0
    records = ok = 0
    with out.open() as f:
        for line in f:
            if not line.strip():
                continue
            records += 1
            # Parsing 100k lines just for a flag would cost more than the check is worth.
            ok += '"ok": true' in line or '"ok":true' in line
    return records, ok


def busy_seconds(out: Path) -> float:
    """Decode plus inference time the pool children reported, summed over all records.

    Workers give each image its share of the batch's forward time, so the sum is the
    children's total compute time.
    """
    total_ms = 0.0
    with out.open() as f:
        for line in f:
            record = json.loads(line)
            total_ms += float(record.get("decode_ms") or 0) + float(record.get("infer_ms") or 0)
    return total_ms / 1000


def read_topk(out: Path) -> dict[str, list[tuple[int, float]]]:
    """path -> [(class index, prob), ...] for every successful record."""
    result: dict[str, list[tuple[int, float]]] = {}
    with out.open() as f:
        for line in f:
            record: dict[str, Any] = json.loads(line)
            if record.get("ok") and record.get("top_k"):
                result[record["path"]] = [
                    (int(t["index"]), float(t["prob"])) for t in record["top_k"]
                ]
    return result
