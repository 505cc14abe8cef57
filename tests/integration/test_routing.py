"""Queues, several nodes, autoscaling, and a node on another network (a namespace).

Each test starts real prefork workers; the ``worker`` field of every result record says
which node did the work.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from producer.embedded import READY_MARK, LocalWorker, find_server, stop_group
from tests.conftest import ROOT, VISIONQ, RedisTarget, cli_env, worker_env
from tests.integration.harness import wait_until
from tests.integration.ops_helpers import run_job, sample_paths

pytestmark = pytest.mark.integration

# One torch thread per child: these tests run up to three nodes on two cores.
ONE_THREAD = {"VISIONQ_THREADS": "1"}


def test_queues_route_jobs_and_nodes_share_a_queue(
    clean_redis: RedisTarget, start_worker, tmp_path: Path
) -> None:
    a = start_worker(
        concurrency=1, name="a@gpu-host", wait=False, VISIONQ_QUEUE="gpu", **ONE_THREAD
    )
    b = start_worker(
        concurrency=1, name="b@cpu-host", wait=False, VISIONQ_QUEUE="cpu", **ONE_THREAD
    )
    c = start_worker(
        concurrency=1, name="c@cpu-host", wait=False, VISIONQ_QUEUE="cpu", **ONE_THREAD
    )
    for w in (a, b, c):
        w.wait_ready()
    # VISIONQ_QUEUE becomes task_default_queue, which is what `celery worker` consumes
    # when neither -Q nor task_queues says otherwise.
    assert re.search(r"\.> gpu +exchange=gpu", a.log_text())
    assert re.search(r"\.> cpu +exchange=cpu", b.log_text())

    # Through the CLI, as an operator would: --queue gpu reaches node a only.
    out = tmp_path / "gpu.jsonl"
    proc = subprocess.run(
        [*VISIONQ, "submit", *sample_paths(), "--queue", "gpu", "--chunk-size", "1",
         "--out", str(out), "--timeout", "120", "--quiet"],
        env=cli_env(clean_redis, str(tmp_path / "state")),
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    gpu_records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(gpu_records) == 5
    assert {r["worker"] for r in gpu_records} == {"a@gpu-host"}

    # Two nodes on one queue: both take chunks (prefetch 1 each, so neither hoards).
    records = run_job(clean_redis, sample_paths() * 4, tmp_path / "state", queue="cpu",
                      chunk_size=1)  # fmt: skip
    assert len(records) == 20 and all(r["ok"] for r in records)
    assert {r["worker"] for r in records} == {"b@cpu-host", "c@cpu-host"}


def test_autoscale_children_load_their_model_before_work(
    clean_redis: RedisTarget, start_worker, tmp_path: Path
) -> None:
    worker = start_worker(concurrency=1, name="auto@visionq", extra_args=("--autoscale=2,1",))
    assert "concurrency: {min=1, max=2}" in worker.log_text()

    # Enough chunks that the autoscaler sees more reserved tasks than children.
    paths = sample_paths() * 16
    records = run_job(clean_redis, paths, tmp_path / "state", chunk_size=4, timeout=180)
    assert len(records) == len(paths) and all(r["ok"] for r in records)
    wait_until(
        lambda: worker.log_text().count(READY_MARK) >= 2,
        120,
        "the autoscaled child to become ready",
    )
    assert "Scaling up 1 processes" in worker.log_text()
    # The new child stays for the autoscaler's keepalive (30 s): a second job now runs
    # on both children.
    records = run_job(clean_redis, sample_paths() * 4, tmp_path / "state", chunk_size=1)
    assert len(records) == 20 and all(r["ok"] for r in records)

    # Per pool process (Celery names them ForkPoolWorker-N in the log): its model was
    # warm before it ran its first task.
    first_ready: dict[str, int] = {}
    first_task: dict[str, int] = {}
    for n, line in enumerate(worker.log_text().splitlines()):
        m = re.search(r"/(ForkPoolWorker-\d+)\]", line)
        if not m:
            continue
        if READY_MARK in line:
            first_ready.setdefault(m.group(1), n)
        elif "Task visionq.classify[" in line:
            first_task.setdefault(m.group(1), n)
    assert len(first_ready) == 2, first_ready
    assert set(first_task) == set(first_ready), "both children should have done work"
    for proc_name, n in first_task.items():
        assert first_ready[proc_name] < n, f"{proc_name} ran a task before its model was warm"


# -- a node in its own network namespace ------------------------------------------------


@dataclass
class Netns:
    name: str
    host_if: str
    host_ip: str
    ns_ip: str


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _netns_unavailable() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    return None


def _free_subnet() -> int:
    """A 10.200.X.0/30 that no interface on this machine uses yet."""
    used = _ip("-o", "addr").stdout
    for x in random.sample(range(1, 255), 254):
        if f"10.200.{x}." not in used:
            return x
    raise RuntimeError("no free 10.200.X.0/30 subnet")


@pytest.fixture
def netns() -> Iterator[Netns]:
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    tag = secrets.token_hex(3)
    ns = Netns(name=f"visionq-{tag}", host_if=f"vqh{tag}", host_ip="", ns_ip="")
    probe = _ip("netns", "add", ns.name, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {probe.stderr.strip()}")
    try:
        x = _free_subnet()
        ns.host_ip, ns.ns_ip = f"10.200.{x}.1", f"10.200.{x}.2"
        peer = f"vqn{tag}"
        _ip("link", "add", ns.host_if, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", ns.name)
        _ip("addr", "add", f"{ns.host_ip}/30", "dev", ns.host_if)
        _ip("link", "set", ns.host_if, "up")
        _ip("netns", "exec", ns.name, "ip", "addr", "add", f"{ns.ns_ip}/30", "dev", peer)
        _ip("netns", "exec", ns.name, "ip", "link", "set", peer, "up")
        _ip("netns", "exec", ns.name, "ip", "link", "set", "lo", "up")
        yield ns
    finally:
        # Deleting the namespace removes its end of the veth pair, and with it ours;
        # the explicit delete covers a failure half-way through the set-up.
        _ip("netns", "del", ns.name, check=False)
        _ip("link", "del", ns.host_if, check=False)


@contextlib.contextmanager
def veth_redis(host: str) -> Iterator[RedisTarget]:
    """A private Redis listening on ``host`` only (the RedisServer helper binds loopback)."""
    with socket.socket() as s:
        s.bind((host, 0))
        port = int(s.getsockname()[1])
    password = secrets.token_hex(12)
    folder = tempfile.mkdtemp(prefix="visionq-redis-veth-")
    proc = subprocess.Popen(
        [find_server(), "--port", str(port), "--bind", host, "--requirepass", password,
         "--save", "", "--appendonly", "no", "--dir", folder,
         "--maxmemory-policy", "noeviction", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    base = f"redis://:{password}@{host}:{port}"
    try:
        client = redis.Redis.from_url(base + "/0", socket_connect_timeout=1)
        wait_until(lambda: _pings(client), 15, f"redis-server on {host}:{port}", every=0.1)
        client.close()
        yield RedisTarget(base + "/0", base + "/1")
    finally:
        stop_group(proc, grace=5)
        shutil.rmtree(folder, ignore_errors=True)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def test_node_in_another_network_namespace_does_work(
    netns: Netns, weights_file: str, redis_target: RedisTarget, tmp_path: Path
) -> None:
    stack = contextlib.ExitStack()
    target = stack.enter_context(veth_redis(netns.host_ip))
    node = "ns-node@visionq"
    worker = LocalWorker(
        worker_env(target, weights_file, str(tmp_path / "state"), **ONE_THREAD),
        concurrency=1,
        name=node,
        extra_args=("--without-gossip", "--without-mingle"),
        log_path=str(tmp_path / "ns-worker.log"),
        cwd=str(ROOT),
    )
    worker.args = ["ip", "netns", "exec", netns.name, *worker.args]
    try:
        worker.start()
        worker.wait_ready()
        assert worker.proc is not None
        # `ip netns exec` execs the worker: its pid is the worker, in the other namespace.
        assert os.readlink(f"/proc/{worker.proc.pid}/ns/net") != os.readlink("/proc/self/ns/net")

        # Inside the namespace the host's loopback Redis is out of reach: the node can
        # only have talked to Redis over the veth pair.
        loopback_port = urlsplit(redis_target.broker_url).port or 6379
        probe = subprocess.run(
            ["ip", "netns", "exec", netns.name, sys.executable, "-c",
             f"import socket; socket.create_connection(('127.0.0.1', {loopback_port}), 2)"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert probe.returncode != 0

        records = run_job(target, sample_paths(), tmp_path / "state", chunk_size=2)
        assert len(records) == 5 and all(r["ok"] for r in records)
        assert {r["worker"] for r in records} == {node}
    finally:
        worker.stop()
        stack.close()
