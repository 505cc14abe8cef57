"""The worker's settings, read from the environment once, at import of the Celery app."""

from __future__ import annotations

from typing import Any

from visionq.celeryconf import celery_config
from visionq.settings import Settings


def load() -> tuple[Settings, dict[str, Any]]:
    settings = Settings.from_env()
    return settings, celery_config(settings)
