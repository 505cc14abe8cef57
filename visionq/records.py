"""Records a pool child publishes about itself, defined once for both sides.

* :class:`ChildRecord`: the registry entry each warm child writes to Redis (a hash per
  node, pid -> JSON); ``visionq status`` shows it and the collector sizes chunks and
  the window from it.
* :func:`ready_line`: the log line a child prints once its model is warm; the embedded
  stack and the benchmarks wait for :data:`READY_MARK`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

READY_MARK = "visionq child ready"
# Children re-register from the task path at most this often; a record older than
# FRESH_S belongs to a child that is gone or idle, and is not counted as fleet.
REFRESH_S = 60.0
FRESH_S = 10 * REFRESH_S


@dataclass
class ChildRecord:
    """One pool child, as registered in ``visionq:worker:<node>``."""

    pid: int
    index: int = 0
    device: str = "?"
    threads: int = 0
    weights: str = "?"
    precision: str = "?"
    batch_size: int = 0
    load_ms: float = 0.0
    warm: bool = True
    decode: str = "cpu"  # where JPEGs are decoded: cpu, or gpu (VISIONQ_DECODE)
    seen: float = 0.0  # wall clock of the last registration; 0 for older workers
    extra: dict[str, Any] = field(default_factory=dict)  # fields a newer worker added

    def to_json(self) -> str:
        data = asdict(self)
        extra = data.pop("extra")
        return json.dumps({**extra, **data})

    @classmethod
    def from_json(cls, raw: str | bytes) -> ChildRecord:
        data = json.loads(raw)
        known = {f.name for f in fields(cls)} - {"extra"}
        record = cls(**{k: v for k, v in data.items() if k in known})
        record.extra = {k: v for k, v in data.items() if k not in known}
        return record

    def fresh(self, now: float | None = None) -> bool:
        return self.warm and (not self.seen or (now or time.time()) - self.seen < FRESH_S)


def ready_line(record: ChildRecord) -> str:
    """The line a child logs once warm; ``READY_MARK`` starts it."""
    return (
        f"{READY_MARK} pid={record.pid} index={record.index} device={record.device} "
        f"threads={record.threads} weights={record.weights} precision={record.precision} "
        f"batch={record.batch_size} load_ms={record.load_ms:.0f}"
    )
