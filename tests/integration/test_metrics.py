"""The worker's Prometheus endpoint with a real prefork worker: every child counts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from producer.embedded import READY_MARK, free_port
from tests.conftest import ROOT, RedisTarget, bare_env
from tests.integration.harness import wait_until
from tests.integration.ops_helpers import run_job, sample_paths

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)] from the worker's endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name].append((dict(s.labels), s.value))
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return sum(
        v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    )


def children_of(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return {int(p) for p in fh.read().split()}


def maps_torch(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as fh:
        return "libtorch" in fh.read()


def device_pids(samples: dict) -> dict[int, str]:
    return {int(lab["pid"]): lab["device"] for lab, v in samples["visionq_child_device"] if v == 1}


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_metrics_cover_all_children_and_survive_a_killed_child(
    clean_redis: RedisTarget, start_worker, tmp_path: Path
) -> None:
    port = free_port()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    # TMPDIR points the worker's private multiprocess folder at a place this test sees.
    worker = start_worker(concurrency=2, VISIONQ_METRICS_PORT=str(port), TMPDIR=str(tmp))
    parent = worker.proc.pid
    kids = children_of(parent)
    assert len(kids) == 2
    assert len(list(tmp.glob("visionq-metrics-*"))) == 1
    assert f"visionq metrics on :{port}" in worker.log_text()

    # The prefork parent must never load torch (a forked OpenMP pool deadlocks); its children do.
    assert not maps_torch(parent), "the prefork parent mapped libtorch"
    assert all(maps_torch(k) for k in kids)

    bad = tmp_path / "notes.jpg"
    bad.write_text("not a JPEG\n")
    paths = [*sample_paths(), str(bad), str(tmp_path / "missing.jpg")]
    records = run_job(clean_redis, paths, tmp_path / "state", chunk_size=2)
    assert len(records) == 7
    assert len({r["worker"] for r in records}) == 1

    m = scrape(port)
    assert value(m, "visionq_images_total", outcome="ok", error_type="none") == 5
    assert value(m, "visionq_images_total", outcome="error", error_type="UnreadableImage") == 1
    assert value(m, "visionq_images_total", outcome="error", error_type="FileNotFound") == 1
    assert value(m, "visionq_decode_seconds_count") == 5  # decoded images only
    assert value(m, "visionq_batch_size_sum") == 5  # every decoded image was forwarded
    # One forward pass per chunk holding a decodable image (batch size 8 > chunk 2):
    # [astronaut, cat], [coffee, motorcycle], [rocket, notes]; [missing] has none.
    assert value(m, "visionq_batch_size_count") == 3
    assert value(m, "visionq_forward_seconds_count") == 3
    assert value(m, "visionq_model_load_seconds_count") == 2
    assert value(m, "visionq_model_load_seconds_sum") > 0
    assert device_pids(m) == dict.fromkeys(kids, "cpu")

    # A child killed outright never runs its exit hook: its live gauge must still go,
    # its replacement must appear, and the work already counted must stay counted.
    victim = min(kids)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: worker.log_text().count(READY_MARK) >= 3, 120, "a replacement child")
    now = children_of(parent)
    assert victim not in now and len(now) == 2
    m = scrape(port)
    assert device_pids(m) == dict.fromkeys(now, "cpu")
    assert value(m, "visionq_model_load_seconds_count") == 3
    assert value(m, "visionq_images_total", outcome="ok", error_type="none") == 5

    worker.stop()
    assert not list(tmp.glob("visionq-metrics-*")), "multiprocess folder left behind"


def test_taken_port_disables_metrics_without_stopping_the_worker(tmp_path: Path) -> None:
    """setup_parent in a fresh process whose port is taken: a logged error, no folder."""
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        script = textwrap.dedent(
            f"""
            import logging, os, sys
            logging.basicConfig(level=logging.INFO)
            from visionq.settings import Settings
            from workers import metrics
            metrics.setup_parent(Settings(metrics_port={port}))
            assert not metrics.enabled()
            assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
            metrics.observe_image(True, None)  # a no-op, not an error
            assert "torch" not in sys.modules
            """
        )
        tmp = tmp_path / "tmp"
        tmp.mkdir()
        env = bare_env(TMPDIR=str(tmp))
        proc = subprocess.run(
            [sys.executable, "-c", script], cwd=str(ROOT), env=env,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "metrics disabled" in proc.stderr
    assert not list(tmp.iterdir())
