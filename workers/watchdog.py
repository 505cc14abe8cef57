"""Consumption watchdog: reconnect the consumer when it stops taking work it could take.

Celery workers on a Redis broker have been seen to come back from a broker restart
connected and alive, and yet take nothing more from their queue (celery#8030, #8091,
#8384, #10205): the pid is fine, the queue grows, the job stalls. A liveness check on
the process cannot see it; one on consumption can.

Every few seconds the worker parent asks two cheap questions (one LLEN): does the
queue hold messages, and does this worker hold none (nothing reserved, nothing running)?
A healthy consumer polls its queue every second, so a yes to both that lasts
``VISIONQ_CONSUMER_PATIENCE`` seconds means the consumer is stuck; a busy worker is never
touched. The watchdog then raises a connection error inside the consumer's event loop,
and Celery does what it does for a lost broker: closes the connection, connects again
and consumes afresh. Deliberate pauses are respected: a worker told to stop consuming
its queue (``celery control cancel_consumer``) is left alone.

Torch-free: this runs in the Celery parent.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import bootsteps
from celery.worker import state

from visionq.celeryconf import redis_client

log = logging.getLogger(__name__)

CHECK_EVERY_S = 5.0


class ConsumerStuck(ConnectionError):
    """Raised in the consumer's loop to make Celery reconnect it. A ConnectionError, so
    it is one of every kombu transport's ``connection_errors``."""


class Stall:
    """Decides when "work waits, and this worker holds none" has lasted too long."""

    def __init__(self, patience: float) -> None:
        self.patience = patience
        self.since: float | None = None

    def observe(self, queued: int, held: int, now: float) -> bool:
        """Record one look; True once the stall has lasted ``patience`` seconds (the
        clock then starts again, so a reconnect gets the same patience)."""
        if queued <= 0 or held > 0:
            self.since = None
            return False
        if self.since is None:
            self.since = now
            return False
        if now - self.since < self.patience:
            return False
        self.since = None
        return True


class QueueProbe:
    """Messages waiting in broker queues, asked over a connection of its own with short
    timeouts: the consumer's own connection may be the stuck part."""

    def __init__(self, broker_url: str) -> None:
        self.client = redis_client(broker_url, socket_timeout=2, socket_connect_timeout=2)

    def waiting(self, queues: list[str]) -> int | None:
        """Messages waiting in ``queues`` together, or None when the broker cannot be
        asked (an outage is the consumer's own reconnect logic's business)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for q in queues:
                pipe.llen(q)
            return sum(int(n) for n in pipe.execute())
        except redis.RedisError:
            return None

    def close(self) -> None:
        self.client.close()


class Watchdog(bootsteps.StartStopStep):
    """Consumer bootstep that runs the check on the event loop's timer; make one with
    :func:`step`."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    patience = 30.0

    def include_if(self, c: Any) -> bool:
        return self.patience > 0

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self.probe: QueueProbe | None = None
        self.stall = Stall(self.patience)
        self.tref: Any = None
        super().__init__(c, **kwargs)

    def start(self, c: Any) -> None:
        if self.probe is None:
            self.probe = QueueProbe(c.app.conf.broker_url)
        self.stall = Stall(self.patience)
        every = min(CHECK_EVERY_S, max(0.5, self.patience / 3))
        self.tref = c.timer.call_repeatedly(every, self.check, (c,))

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def shutdown(self, c: Any) -> None:
        self.stop(c)
        if self.probe is not None:
            self.probe.close()
            self.probe = None

    def check(self, c: Any) -> None:
        """One look; raises ConsumerStuck when the consumer must reconnect."""
        consumer = getattr(c, "task_consumer", None)
        # The queues it consumes now: `-Q`, add_consumer and cancel_consumer all show here.
        queues = [q.name for q in consumer.queues] if consumer is not None else []
        waiting = self.probe.waiting(queues) if self.probe is not None and queues else None
        if waiting is None:
            self.stall.since = None
            return
        if self.stall.observe(waiting, len(state.reserved_requests), time.monotonic()):
            log.warning(
                "consumer took nothing for %.0f s while %d messages wait in %s; reconnecting",
                self.patience, waiting, ", ".join(queues),
            )  # fmt: skip
            raise ConsumerStuck(f"consumer stuck with {waiting} messages waiting")


def step(patience: float) -> type[Watchdog]:
    """The bootstep, acting after ``patience`` seconds (VISIONQ_CONSUMER_PATIENCE)."""
    return type("Watchdog", (Watchdog,), {"patience": patience})
