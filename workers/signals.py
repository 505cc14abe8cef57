"""Worker lifecycle hooks: what the prefork parent and each pool child do at start-up.

The parent only records who it is; it never imports torch. Each child places itself
on a device, loads and warms its model (``worker_process_init``, after the fork) and
registers itself in Redis so ``visionq status`` can show per-child devices.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)
from kombu.utils.url import maybe_sanitize_url

from visionq.records import ready_line
from workers import app, metrics, registry, settings

log = logging.getLogger(__name__)

# The WorkController, captured in the parent and inherited by every forked child.
_controller: Any = None


@worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    global _controller
    _controller = sender
    metrics.setup_parent(settings)


@worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    # Logged here rather than in worker_init: Celery sets up logging between the two.
    log.info(
        "visionq worker: broker=%s backend=%s queue=%s device=%s weights=%s precision=%s",
        maybe_sanitize_url(settings.broker_url),
        maybe_sanitize_url(settings.backend_url),
        settings.queue,
        settings.device,
        settings.weights,
        settings.precision,
    )


def _pool_size() -> int:
    if _controller is None:
        return 1
    autoscale = getattr(_controller, "max_concurrency", None)
    return int(autoscale or _controller.concurrency or 1)


def _hostname() -> str:
    return getattr(_controller, "hostname", None) or app.conf.get("worker_name") or "celery"


@worker_process_init.connect
def _on_child_init(**_: Any) -> None:
    from billiard.process import current_process

    from workers import runtime  # torch loads here, in the child

    index = getattr(current_process(), "index", 0) or 0
    try:
        rt = runtime.start(
            settings, child_index=index, concurrency=_pool_size(), hostname=_hostname()
        )
    except Exception as exc:
        # A child that cannot load would be respawned forever; stop the whole node so
        # the operator sees the message once, clearly.
        log.critical("visionq child cannot start: %s", exc)
        os.kill(os.getppid(), signal.SIGTERM)
        raise
    record = rt.record(index)
    metrics.child_started(rt.placement.device, rt.load_ms / 1000)
    log.info("%s", ready_line(record))
    registry.register(app.backend.client, rt.hostname, record, settings.result_expires)


@worker_process_shutdown.connect
def _on_child_shutdown(pid: int | None = None, **_: Any) -> None:
    metrics.child_exited(pid or os.getpid())
    registry.unregister(app.backend.client, _hostname(), pid or os.getpid())
