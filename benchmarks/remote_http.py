"""Images over HTTP with 50 ms per request vs the same images on local disk.

The same warm 2-child fp32 worker classifies the corpus twice, at the default chunk size:
once from local paths, once as URLs served by a loopback HTTP server that waits 50 ms
before answering each request (a distant object store or CDN). Fetch-ahead should hide
that latency behind decoding and the forward pass: the target is >= 0.9x local.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.redis_server import private_redis
from benchmarks.results import Row, error_row
from benchmarks.visionq_cli import chunk_label, environment, submit, worker
from benchmarks.visionq_e2e import HEADLINE_CHUNK, WARMUP_IMAGES

log = logging.getLogger(__name__)

LATENCY_S = 0.050
LOCAL = f"local disk, {chunk_label(HEADLINE_CHUNK)}"
HTTP = f"HTTP +{LATENCY_S * 1000:.0f} ms/request, {chunk_label(HEADLINE_CHUNK)}"


def run(paths: Sequence[Path], weights: Path, workdir: Path, emit: Callable[[Row], None]) -> None:
    """Emit the local and the HTTP row, the HTTP one with its ratio to local."""
    from tests.stores import HTTPSite  # the project's loopback file server

    root = paths[0].resolve().parent
    local_list = workdir / "remote-local.txt"
    local_list.write_text("".join(f"{p.resolve()}\n" for p in paths))
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-state-") as state,
            private_redis() as server,
            HTTPSite(root, latency=LATENCY_S) as site,
        ):
            url_list = workdir / "remote-http.txt"
            url_list.write_text("".join(site.url(p.resolve().name) + "\n" for p in paths))
            warm = workdir / "remote-warmup.txt"
            warm.write_text("".join(site.url(p.name) + "\n" for p in paths[:WARMUP_IMAGES]))
            env = environment(server, weights, "fp32", Path(state))
            with worker(env, workdir / "worker-remote.log"):
                # Connections and the fetch pool are made on the first URL; off the clock.
                submit(env, warm, workdir / "remote-warmup.jsonl", HEADLINE_CHUNK, 120)
                rates: dict[str, float] = {}
                for name, manifest in ((LOCAL, local_list), (HTTP, url_list)):
                    out = workdir / f"remote-{'http' if name == HTTP else 'local'}.jsonl"
                    sub = submit(env, manifest, out, HEADLINE_CHUNK, max(120.0, len(paths) / 5))
                    ok = sub.ok == len(paths)
                    rates[name] = sub.ok / sub.finished.seconds if ok else 0.0
                    figures: dict[str, float | int | str | None] = {"chunk": HEADLINE_CHUNK}
                    if name == HTTP:
                        figures["latency_ms"] = LATENCY_S * 1000
                        figures["requests"] = site.requests
                        if rates.get(LOCAL):
                            figures["x_local"] = round(rates[HTTP] / rates[LOCAL], 3)
                    note = "" if ok else f"only {sub.ok} of {len(paths)} ok: {sub.log_tail}"
                    status = "ok" if ok else "error"
                    seconds = sub.finished.seconds
                    row = Row("remote", name, status, sub.ok, seconds, figures, note)
                    emit(row)
    except Exception as exc:  # recorded as a row; the report goes on
        log.exception("remote benchmark failed")
        emit(error_row("remote", HTTP, exc))
