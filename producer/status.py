"""What ``visionq status`` reports: workers online, their children, queue and in-flight work."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from producer.client import Client
from visionq.protocol import worker_key


@dataclass
class ChildInfo:
    pid: int
    device: str = "?"
    warm: bool = False
    weights: str = "?"
    precision: str = "?"
    threads: int = 0


@dataclass
class WorkerInfo:
    name: str
    children: list[ChildInfo] = field(default_factory=list)
    active: int = 0
    queues: list[str] = field(default_factory=list)


@dataclass
class ClusterStatus:
    workers: list[WorkerInfo]
    queue: str
    queue_depth: int
    in_flight: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def gather(client: Client, *, timeout: float = 2.0) -> ClusterStatus:
    client.wait_ready()
    inspect = client.celery.control.inspect(timeout=timeout)
    stats = inspect.stats() or {}
    active = inspect.active() or {} if stats else {}
    queues = inspect.active_queues() or {} if stats else {}
    workers = []
    for name in sorted(stats):
        pids = stats[name].get("pool", {}).get("processes", []) or []
        registry = client.redis.hgetall(worker_key(name))
        children = []
        for pid in pids:
            raw = registry.get(str(pid).encode())
            info = json.loads(raw) if raw else {}
            children.append(
                ChildInfo(
                    pid=int(pid),
                    device=info.get("device", "?"),
                    warm=bool(info.get("warm", False)),
                    weights=info.get("weights", "?"),
                    precision=info.get("precision", "?"),
                    threads=int(info.get("threads", 0)),
                )
            )
        workers.append(
            WorkerInfo(
                name=name,
                children=children,
                active=len(active.get(name, [])),
                queues=[q["name"] for q in queues.get(name, [])],
            )
        )
    with client.celery.connection_for_read() as conn:
        depth = conn.default_channel.client.llen(client.settings.queue)
    return ClusterStatus(
        workers=workers,
        queue=client.settings.queue,
        queue_depth=int(depth),
        in_flight=sum(w.active for w in workers),
    )


def render(status: ClusterStatus) -> str:
    lines = []
    if not status.workers:
        lines.append("no worker answered")
    for w in status.workers:
        lines.append(f"{w.name}  queues={','.join(w.queues) or '-'}  active={w.active}")
        for c in w.children:
            lines.append(
                f"  pid {c.pid:<8} {c.device:<8} {'warm' if c.warm else 'cold':<5} "
                f"weights={c.weights} precision={c.precision} threads={c.threads}"
            )
    lines.append(
        f"queue {status.queue}: {status.queue_depth} waiting, {status.in_flight} in flight"
    )
    return "\n".join(lines)
