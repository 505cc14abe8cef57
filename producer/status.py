"""What ``visionq status`` reports: workers online, their children and the queues.

Two sources, because neither knows everything:

* Celery remote control (``inspect``): which nodes answer, their pool child pids, the
  queues they consume, the tasks each runs (active) or holds prefetched (reserved).
* The registry each pool child writes to Redis once its model is warm
  (:func:`visionq.protocol.worker_key`): device, weights id, precision, threads. A child
  listed by ``inspect`` but absent from the registry is still loading its model.

Queue depths come from the broker: the waiting messages of the requested queue and of
every queue an online node consumes.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from kombu.exceptions import ChannelError

from producer.client import Client
from visionq.protocol import worker_key
from visionq.records import ChildRecord

log = logging.getLogger(__name__)


@dataclass
class ChildInfo:
    pid: int
    warm: bool = False  # False: listed by the pool but not registered yet (loading)
    device: str = "?"
    weights: str = "?"
    precision: str = "?"
    threads: int = 0
    batch_size: int = 0
    decode: str = "cpu"
    # Set when the child was asked for bf16/fp16/auto: the start-up speed check, e.g.
    # "bf16 38.1 img/s vs fp32 58.9 img/s (0.65x, slower)".
    speed: str = ""


@dataclass
class WorkerInfo:
    name: str
    children: list[ChildInfo] = field(default_factory=list)
    active: int = 0  # tasks running now
    reserved: int = 0  # tasks received (prefetched) but not started
    queues: list[str] = field(default_factory=list)


@dataclass
class ClusterStatus:
    workers: list[WorkerInfo]
    queue: str  # the queue asked about (--queue / VISIONQ_QUEUE)
    queue_depth: int  # messages waiting in it
    in_flight: int  # tasks taken from the queues and not finished: active + reserved
    queues: dict[str, int] = field(default_factory=dict)  # every queue shown -> waiting

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def gather(client: Client, *, timeout: float = 2.0) -> ClusterStatus:
    """Ask every node, then the registry and the broker. Waits ``timeout`` once."""
    client.wait_ready()
    control = client.celery.control
    # Nobody knows how many nodes exist, so this first broadcast waits the full
    # timeout; the follow-ups name the nodes that answered and return as soon as all
    # of them have replied.
    stats: dict[str, Any] = control.inspect(timeout=timeout).stats() or {}
    names = sorted(stats)
    active: dict[str, Any] = {}
    reserved: dict[str, Any] = {}
    consumed: dict[str, Any] = {}
    if names:
        ask = control.inspect(timeout=timeout, destination=names, limit=len(names))
        active = ask.active() or {}
        reserved = ask.reserved() or {}
        consumed = ask.active_queues() or {}

    workers = [
        WorkerInfo(
            name=name,
            children=_children(client, name, stats[name]),
            active=len(active.get(name) or []),
            reserved=len(reserved.get(name) or []),
            queues=sorted(q["name"] for q in consumed.get(name) or []),
        )
        for name in names
    ]
    wanted = {client.settings.queue, *(q for w in workers for q in w.queues)}
    depths = _queue_depths(client, sorted(wanted))
    return ClusterStatus(
        workers=workers,
        queue=client.settings.queue,
        queue_depth=depths.get(client.settings.queue, 0),
        in_flight=sum(w.active + w.reserved for w in workers),
        queues=depths,
    )


def _children(client: Client, name: str, stats: dict[str, Any]) -> list[ChildInfo]:
    pids = (stats.get("pool") or {}).get("processes") or []
    registry = client.redis.hgetall(worker_key(name))
    children = []
    for pid in pids:
        raw = registry.get(str(pid).encode())
        if not raw:
            children.append(ChildInfo(pid=int(pid)))
            continue
        info = ChildRecord.from_json(raw)
        children.append(
            ChildInfo(
                pid=int(pid),
                warm=info.warm,
                device=info.device,
                weights=info.weights,
                precision=info.precision,
                threads=info.threads,
                batch_size=info.batch_size,
                decode=info.decode,
                speed=_speed(info.extra),
            )
        )
    return children


def _speed(info: dict[str, Any]) -> str:
    check = info.get("speed_check")
    if not isinstance(check, dict):
        return ""
    try:
        fp32, reduced = float(check["fp32_img_s"]), float(check["reduced_img_s"])
        name = str(check["reduced"])
    except (KeyError, TypeError, ValueError):
        return ""
    ratio = reduced / fp32 if fp32 else 0.0
    verdict = ", slower" if reduced < fp32 else ""
    asked = info.get("precision_requested", "?")
    return (
        f"asked {asked}: {name} {reduced:.1f} img/s vs fp32 {fp32:.1f} img/s "
        f"({ratio:.2f}x{verdict})"
    )


def _queue_depths(client: Client, queues: list[str]) -> dict[str, int]:
    """Waiting messages per queue, priority sub-queues included; 0 for unknown queues."""
    depths = {}
    with client.celery.connection_for_read() as conn:
        channel = conn.default_channel
        for name in queues:
            try:
                # passive: measure without creating the queue or its binding
                depths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
            except ChannelError:  # no message was ever left in it
                depths[name] = 0
    return depths


def render(status: ClusterStatus) -> str:
    lines = []
    if not status.workers:
        lines.append("no worker answered")
    for w in status.workers:
        lines.append(
            f"{w.name}  queues={','.join(w.queues) or '-'}  "
            f"active={w.active}  reserved={w.reserved}  children={len(w.children)}"
        )
        for c in w.children:
            if c.warm:
                lines.append(
                    f"  pid {c.pid:<8} {c.device:<7} warm     weights={c.weights} "
                    f"precision={c.precision} threads={c.threads} batch={c.batch_size}"
                    + (f" decode={c.decode}" if c.decode != "cpu" else "")
                )
                if c.speed:
                    lines.append(f"    speed check: {c.speed}")
            else:
                lines.append(f"  pid {c.pid:<8} {'?':<7} loading")
    for name, depth in status.queues.items():
        lines.append(f"queue {name}: {depth} waiting")
    lines.append(f"in flight: {status.in_flight} (running or prefetched by workers)")
    return "\n".join(lines)
