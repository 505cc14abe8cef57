"""``visionq status`` against a real prefork worker, and with nobody answering."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from producer.client import Client
from producer.status import ChildInfo, ClusterStatus, WorkerInfo, render
from tests.conftest import VISIONQ, RedisTarget, cli_env
from tests.integration.harness import wait_until
from tests.integration.ops_helpers import sample_paths
from visionq.settings import Settings

NODE = "status-test@visionq"


def status(target: RedisTarget, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*VISIONQ, "status", *args],
        env=cli_env(target, str(tmp_path / "state")),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def status_json(target: RedisTarget, tmp_path: Path, *args: str) -> dict[str, Any]:
    proc = status(target, tmp_path, "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def publish(target: RedisTarget, tmp_path: Path, paths: list[str], **kw: Any) -> None:
    settings = Settings(
        broker_url=target.broker_url,
        result_backend=target.backend_url,
        state_dir=str(tmp_path / "state"),
    )
    with Client(settings=settings) as client:
        # Not collected, so every chunk is published now (as --no-wait does): the test
        # looks at the queues only.
        client.submit(paths, wait=False, **kw)


@pytest.mark.integration
def test_status_shows_children_queues_and_work_in_flight(
    clean_redis: RedisTarget, start_worker, tmp_path: Path
) -> None:
    worker = start_worker(concurrency=2, name=NODE)

    text = status(clean_redis, tmp_path)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0].startswith(f"{NODE}  queues=visionq")
    assert text.stdout.count(" warm ") == 2
    assert "queue visionq: 0 waiting" in text.stdout

    st = status_json(clean_redis, tmp_path)
    assert [w["name"] for w in st["workers"]] == [NODE]
    (w,) = st["workers"]
    assert w["queues"] == ["visionq"]
    pids = {c["pid"] for c in w["children"]}
    assert pids == {int(p) for p in _children(worker.proc.pid)}
    for child in w["children"]:
        assert child["warm"] is True
        assert child["device"] == "cpu"
        assert child["weights"].startswith("file-")
        assert child["precision"] == "fp32" and child["threads"] >= 1
    assert st["queue"] == "visionq" and st["queue_depth"] == 0 and st["in_flight"] == 0

    # A queue nobody consumes: its depth is the number of chunks published to it.
    publish(clean_redis, tmp_path, sample_paths(), chunk_size=2, queue="parked")
    st = status_json(clean_redis, tmp_path, "--queue", "parked")
    assert st["queue"] == "parked" and st["queue_depth"] == 3
    assert st["queues"] == {"parked": 3, "visionq": 0}

    # A long job on the worker's queue: some chunks running, the rest waiting.
    publish(clean_redis, tmp_path, sample_paths() * 100, chunk_size=16)
    st = wait_until(
        lambda: (s := status_json(clean_redis, tmp_path))["in_flight"] >= 1 and s,
        30,
        "status to report work in flight",
        every=0.1,
    )
    assert st["queue_depth"] >= 1
    assert 1 <= st["workers"][0]["active"] <= 2


def _children(pid: int) -> list[str]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return fh.read().split()


@pytest.mark.integration
def test_status_without_workers_exits_1(clean_redis: RedisTarget, tmp_path: Path) -> None:
    text = status(clean_redis, tmp_path, "--timeout", "0.5")
    assert text.returncode == 1
    assert "no worker answered" in text.stdout
    assert "queue visionq: 0 waiting" in text.stdout

    js = status(clean_redis, tmp_path, "--json", "--timeout", "0.5")
    assert js.returncode == 1
    assert json.loads(js.stdout)["workers"] == []
    assert "no worker answered" in js.stderr


def test_render_marks_loading_children() -> None:
    st = ClusterStatus(
        workers=[
            WorkerInfo(
                name="w@h",
                children=[
                    ChildInfo(pid=11, warm=True, device="cuda:0", weights="imagenet1k_v1-f37072fd",
                              precision="bf16", threads=1, batch_size=64),
                    ChildInfo(pid=12),
                ],
                active=1,
                reserved=1,
                queues=["gpu"],
            )
        ],
        queue="gpu",
        queue_depth=7,
        in_flight=2,
        queues={"gpu": 7},
    )  # fmt: skip
    lines = render(st).splitlines()
    assert lines[0] == "w@h  queues=gpu  active=1  reserved=1  children=2"
    assert "cuda:0" in lines[1] and "warm" in lines[1] and "imagenet1k_v1-f37072fd" in lines[1]
    assert lines[2].split()[-1] == "loading"
    assert lines[3] == "queue gpu: 7 waiting"
    assert lines[4].startswith("in flight: 2")
