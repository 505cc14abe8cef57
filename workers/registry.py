"""Each pool child's record in Redis, which ``visionq status`` reads.

Written when the child is warm and refreshed from tasks now and then, so a Redis that
restarted (or came up after the worker) learns the children again.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from visionq.protocol import worker_key
from visionq.records import REFRESH_S, ChildRecord

log = logging.getLogger(__name__)


_record: ChildRecord | None = None
_hostname = ""
_ttl = 0
_last = 0.0


def register(client: Any, hostname: str, record: ChildRecord, ttl: int) -> None:
    global _record, _hostname, _ttl
    _record, _hostname, _ttl = record, hostname, ttl
    _write(client)


def refresh(client: Any) -> None:
    if _record is not None and time.monotonic() - _last > REFRESH_S:
        _write(client)


def unregister(client: Any, hostname: str, pid: int) -> None:
    try:
        client.hdel(worker_key(hostname), str(pid))
    except Exception:
        log.debug("could not unregister child %d", pid, exc_info=True)


def _write(client: Any) -> None:
    global _last
    _last = time.monotonic()
    try:
        key = worker_key(_hostname)
        pipe = client.pipeline(transaction=False)
        _record.seen = time.time()
        pipe.hset(key, str(os.getpid()), _record.to_json())
        pipe.expire(key, _ttl)
        pipe.execute()
    except Exception:  # status is a convenience; never fail a warm child over it
        log.warning("could not register child in Redis", exc_info=True)
