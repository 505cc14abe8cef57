"""Flower against the project's own settings: a real worker, a real Flower, real Redis.

``celery -A workers flower`` reads the broker from the visionq app; the workers send
task events (``worker_send_task_events``) and heartbeats, which is all Flower needs,
even with the ``--without-gossip --without-mingle`` the fixture passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RedisTarget
from tests.integration.harness import wait_until
from tests.integration.ops_helpers import FlowerProcess, run_job, sample_paths

pytestmark = pytest.mark.integration

NODE = "flower-test@visionq"
AUTH = ("visionq", "s3cret-pass")


@pytest.fixture
def flower(clean_redis: RedisTarget, tmp_path: Path) -> Iterator[FlowerProcess]:
    proc = FlowerProcess(clean_redis, tmp_path / "flower.log", auth=AUTH)
    try:
        yield proc
    finally:
        proc.stop()


def _events(flower: FlowerProcess, event_type: str, worker: str) -> float:
    status, body = flower.get("/metrics", auth=False)
    assert status == 200
    total = 0.0
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if (
                s.name == "flower_events_total"
                and s.labels.get("type") == event_type
                and s.labels.get("worker") == worker
            ):
                total += s.value
    return total


def test_flower_lists_worker_counts_events_and_requires_auth(
    clean_redis: RedisTarget, start_worker, flower: FlowerProcess, tmp_path: Path
) -> None:
    worker = start_worker(concurrency=1, name=NODE, wait=False)
    flower.wait_ready()
    worker.wait_ready()

    # The credentials came through FLOWER_BASIC_AUTH: nothing in ps shows them.
    cmdline = Path(f"/proc/{flower.proc.pid}/cmdline").read_bytes().decode()
    assert AUTH[1] not in cmdline and "--basic-auth" not in cmdline, cmdline
    # Without credentials the API, and the dashboard, refuse.
    assert flower.get("/api/workers", auth=False)[0] == 401
    assert flower.get("/", auth=False)[0] == 401
    assert flower.get("/api/workers", auth=True)[0] == 200

    # refresh=1 makes Flower inspect now: it may have started before the worker did.
    workers = wait_until(
        lambda: NODE in (found := flower.get_json("/api/workers?refresh=1")) and found,
        60,
        "Flower to list the worker",
    )
    assert [q["name"] for q in workers[NODE]["active_queues"]] == ["visionq"]
    assert workers[NODE]["stats"]["pool"]["max-concurrency"] == 1
    # Online status comes from heartbeats (events), not from gossip.
    wait_until(
        lambda: flower.get_json("/api/workers?status=1").get(NODE) is True,
        30,
        "the worker to be reported online",
    )

    paths = sample_paths()[:4]
    records = run_job(clean_redis, paths, tmp_path / "state", chunk_size=2)
    assert len(records) == 4 and all(r["ok"] for r in records)
    assert {r["worker"] for r in records} == {NODE}

    wait_until(
        lambda: _events(flower, "task-succeeded", NODE) >= 2,
        30,
        "Flower to count two task-succeeded events",
    )
    assert _events(flower, "task-succeeded", NODE) == 2
    assert _events(flower, "task-received", NODE) == 2

    # The task list carries the visionq task with its outcome.
    tasks = flower.get_json("/api/tasks")
    mine = [t for t in tasks.values() if t.get("name") == "visionq.classify"]
    assert len(mine) == 2 and {t["state"] for t in mine} == {"SUCCESS"}
