"""Prometheus metrics for the worker (``VISIONQ_METRICS_PORT``; off when unset).

Placeholder interface: every call is a no-op until metrics are enabled. The pipeline
and the lifecycle hooks call these functions; nothing else touches prometheus_client.
"""

from __future__ import annotations

from typing import Any


def setup_parent(settings: Any) -> None:
    """In the prefork parent, before the fork: prepare shared storage, start the server."""


def child_started(device: str, load_seconds: float) -> None:
    """In a pool child, once its model is warm."""


def observe_image(ok: bool, error_type: str | None) -> None:
    """One image finished, by outcome and error type."""


def observe_decode(seconds: float) -> None:
    """Time to open, decode and preprocess one image."""


def observe_batch(size: int, seconds: float) -> None:
    """One forward pass of ``size`` images."""


def child_exited(pid: int) -> None:
    """In the parent or the child, when a pool child goes away."""
