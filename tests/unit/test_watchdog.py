"""The consumption watchdog's decision, and its check against a real Redis queue."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery.worker import state

from workers import app
from workers.watchdog import ConsumerStuck, QueueProbe, Stall, step


def test_stall_fires_only_after_patience_of_work_waiting_and_nothing_held():
    stall = Stall(patience=10)
    assert not stall.observe(queued=5, held=0, now=0)
    assert not stall.observe(queued=5, held=0, now=9)
    assert stall.observe(queued=5, held=0, now=10)
    # The clock starts again after it fires: a reconnect gets the same patience.
    assert not stall.observe(queued=5, held=0, now=11)
    assert stall.observe(queued=5, held=0, now=21)


@pytest.mark.parametrize(("queued", "held"), [(0, 0), (5, 1)])
def test_an_empty_queue_or_a_busy_worker_resets_the_clock(queued, held):
    stall = Stall(patience=10)
    stall.observe(queued=5, held=0, now=0)
    assert not stall.observe(queued=queued, held=held, now=5)
    assert not stall.observe(queued=5, held=0, now=12)  # started again at 12
    assert stall.observe(queued=5, held=0, now=22)


class _Consumer:
    def __init__(self, queues: set[str]) -> None:
        self.queues = [SimpleNamespace(name=q) for q in sorted(queues)]


def _watchdog(clean_redis, queues: set[str]):
    c = SimpleNamespace(app=app, task_consumer=_Consumer(queues))
    dog = step(10.0)(c)
    dog.probe = QueueProbe(clean_redis.broker_url)
    return c, dog


def test_check_raises_a_connection_error_when_work_waits_for_an_idle_consumer(clean_redis):
    c, dog = _watchdog(clean_redis, {"visionq", "other"})
    clean_redis.client(clean_redis.broker_url).lpush("other", b"{}")  # any queue it consumes
    assert not state.reserved_requests
    dog.check(c)  # starts the clock
    dog.check(c)  # not yet: 10 s of patience
    dog.stall.since -= 10.0  # as if the first look had been 10 s ago
    with pytest.raises(ConsumerStuck) as info:
        dog.check(c)
    assert isinstance(info.value, ConnectionError)  # what Celery reconnects on


def test_check_leaves_alone_an_empty_queue_and_a_cancelled_consumer(clean_redis):
    c, dog = _watchdog(clean_redis, {"visionq"})
    for _ in range(3):
        dog.check(c)  # empty queue
        assert dog.stall.since is None
    clean_redis.client(clean_redis.broker_url).lpush("visionq", b"{}")
    c.task_consumer = _Consumer(set())  # `celery control cancel_consumer`: deliberate
    for _ in range(3):
        dog.check(c)
        assert dog.stall.since is None


def test_an_unreachable_broker_is_left_to_celerys_own_reconnect():
    assert QueueProbe("redis://127.0.0.1:1/0").waiting(["visionq"]) is None
