"""The visionq worker: ``celery -A workers worker`` runs it.

This module builds the Celery ``app`` and must stay free of torch: the prefork parent
imports it, and a parent that has run torch work breaks its forked children (their
OpenMP thread pool deadlocks on first use).
Each pool child loads its model after the fork, in :mod:`workers.signals`.
"""

from __future__ import annotations

import logging

from celery import Celery

from workers import watchdog
from workers.config import load

settings, _conf = load()

app = Celery("visionq")
app.conf.update(_conf)

logging.getLogger("workers").setLevel(settings.log_level.upper())

# Liveness by consumption, not by pid: see workers.watchdog.
app.steps["consumer"].add(watchdog.step(settings.consumer_patience))

# Registered for their side effects: the task and the lifecycle hooks.
from workers import signals, tasks  # noqa: E402, F401

__all__ = ["app", "settings"]
