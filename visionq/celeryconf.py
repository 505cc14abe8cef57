"""Celery configuration built from :class:`visionq.settings.Settings`, for both sides.

Why each delivery setting is what it is, from Celery and kombu behaviour and bug reports:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a chunk whose child dies is
  requeued instead of lost (at-least-once). Chunks are idempotent by task id.
* ``worker_prefetch_multiplier=1``: a chunk runs for seconds; prefetching more would
  park work on a busy node while others idle.
* ``visibility_timeout`` above the hard time limit, or a long chunk is redelivered
  while it still runs (celery#5935).
* socket timeouts on both connections, so a paused Redis raises instead of hanging.
* ``rediss://`` without ``ssl_cert_reqs`` verifies the server's certificate: kombu
  alone would fall back to CERT_NONE (an unauthenticated "TLS" link) and Celery's
  backend would refuse the URL.
* ``ssl_check_hostname`` is set, never left to redis-py's default: before 6.0 that
  default was False, and a certificate issued to any name by a trusted CA was then
  accepted (a man in the middle with any valid certificate). The floor is redis>=6
  too, for URLs that bring their own ``ssl_*`` parameters.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from visionq.redisurl import is_socket, redis_py_url
from visionq.settings import Settings

if TYPE_CHECKING:
    import redis


def tls_defaults(url: str) -> dict[str, Any] | None:
    """SSL options for a ``rediss://`` URL that names none, else None (the URL's own
    ``ssl_*`` query parameters apply unchanged)."""
    parts = urlsplit(url)
    if parts.scheme != "rediss" or "ssl_cert_reqs" in parse_qs(parts.query):
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}


def redis_client_options(url: str) -> dict[str, Any]:
    """Keyword arguments for redis-py's ``Redis.from_url(url)``: for ``rediss://`` the
    server's name is checked whatever the redis-py version's default (the URL's own
    ``ssl_check_hostname`` still wins, as from_url lets URL options override)."""
    return {"ssl_check_hostname": True} if urlsplit(url).scheme == "rediss" else {}


def redis_client(url: str, **kwargs: Any) -> redis.Redis:
    """A redis-py client for a visionq Redis URL (socket URLs included), with the
    server's name checked on ``rediss://``; ``kwargs`` go to ``Redis.from_url``."""
    import redis

    return redis.Redis.from_url(redis_py_url(url), **kwargs, **redis_client_options(url))


def celery_config(s: Settings) -> dict[str, Any]:
    time_limit = s.effective_time_limit
    socket_opts = {
        "socket_timeout": 30,
        "socket_connect_timeout": 10,
        "socket_keepalive": True,
        "health_check_interval": 25,
    }
    tls: dict[str, Any] = {}
    if (broker_tls := tls_defaults(s.broker_url)) is not None:
        tls["broker_use_ssl"] = broker_tls
    if (backend_tls := tls_defaults(s.backend_url)) is not None:
        tls["redis_backend_use_ssl"] = backend_tls
    backend_socket = {}
    if not is_socket(s.backend_url):
        # redis-py's UnixDomainSocketConnection takes no keepalive option; Celery's
        # backend passes it through unfiltered (kombu drops it for the broker itself).
        backend_socket["redis_socket_keepalive"] = True
    return {
        **tls,
        **backend_socket,
        "broker_url": s.broker_url,
        "result_backend": s.backend_url,
        # JSON only: a pickle message is refused, never deserialized.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_default_queue": s.queue,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": time_limit,
        "task_soft_time_limit": max(1, time_limit - 5),
        "broker_transport_options": {
            "visibility_timeout": s.visibility_timeout,
            # kombu sweeps for tasks held by dead nodes every interval x throttle
            # seconds (100 s by default); keep it well under the visibility timeout.
            "unacked_restore_interval": max(1, min(10, s.visibility_timeout // 3)),
            "unacked_restore_throttle": 1,
            **socket_opts,
        },
        "result_backend_transport_options": {"retry_policy": {"timeout": 10.0}, **socket_opts},
        "redis_socket_timeout": 30,
        "redis_socket_connect_timeout": 10,
        "redis_retry_on_timeout": True,
        "result_backend_always_retry": True,
        "result_backend_max_retries": 20,
        "result_expires": s.result_expires,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 5,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 2.0,
        },
        # Flower sees queued, running and finished tasks only with these on.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        # Loading and warming a model takes longer than Celery's 4 s default (celery#1715).
        "worker_proc_alive_timeout": s.proc_alive_timeout,
        "worker_redirect_stdouts": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }
