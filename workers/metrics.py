"""Prometheus metrics for the worker (``VISIONQ_METRICS_PORT``; off when 0 or unset).

Prefork children are separate processes, so the counters live in prometheus_client's
*multiprocess mode*: each child writes its values to memory-mapped files in a private
folder and the parent's HTTP endpoint merges those files at every scrape.

Order matters. prometheus_client decides at import time (``values.ValueClass``) whether
values are per-process or file-backed. The parent sets ``PROMETHEUS_MULTIPROC_DIR`` and,
because the ``celery`` command has usually imported prometheus_client already (Flower's
CLI plugin does, when Flower is installed), re-selects the value class; the metric
objects themselves are created lazily, in the children, on first use. The parent never
records a value and never imports torch.

Exposed series (all prefixed ``visionq_``):

* ``images_total{outcome, error_type}``: images finished; outcome ``ok``/``error``,
  error_type a :class:`visionq.schema.ErrorType` value or ``none``.
* ``batch_size``: histogram of images per forward pass.
* ``decode_seconds``: histogram, open + decode + preprocess of one image.
* ``forward_seconds``: histogram, one forward pass (a whole micro-batch).
* ``model_load_seconds``: histogram, one observation per child start (load + warm-up).
* ``child_device{device, pid}``: 1 per live pool child; gone when the child exits
  (the pid label is added by the multiprocess collector).

The pipeline and the lifecycle hooks call the functions below; nothing else touches
prometheus_client. Every call is a cheap no-op while metrics are off.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
import tempfile
from types import SimpleNamespace
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from visionq.settings import Settings

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DECODE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
FORWARD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LOAD_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# Set in the parent by setup_parent() and inherited by every forked child, including
# children that --autoscale or a crash replacement fork much later.
_enabled = False
_dir: str | None = None
_owner_pid: int | None = None  # the parent: only it may remove the folder
_server: Any = None
_port = 0
# Created lazily in each child (see the module docstring for why not at import).
_m: SimpleNamespace | None = None

_LIVE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


def enabled() -> bool:
    return _enabled


def setup_parent(settings: Settings) -> None:
    """In the prefork parent, before the fork: prepare shared storage, start the server."""
    global _enabled, _dir, _owner_pid, _server, _port
    port = int(settings.metrics_port or 0)
    if port <= 0 or _enabled:
        return
    # Always a private folder, even if PROMETHEUS_MULTIPROC_DIR is already set: two
    # workers sharing one folder would report each other's children, and stale files
    # from an earlier run would be counted again.
    path = tempfile.mkdtemp(prefix="visionq-metrics-")
    os.environ[MULTIPROC_ENV] = path
    try:
        # Imported only now that the variable is set; if something imported it earlier,
        # _use_file_values corrects the choice it made then.
        from prometheus_client import CollectorRegistry, start_http_server, values

        _use_file_values(values)
        registry = CollectorRegistry(auto_describe=False)
        _ReapingCollector(registry, path=path)
        # Loopback unless VISIONQ_METRICS_ADDR says otherwise: the counts reveal job
        # sizes and timing, and on a shared host every user could read them. Compose
        # sets 0.0.0.0 inside its private network, where Prometheus scrapes from.
        server, _thread = start_http_server(port, addr=settings.metrics_addr, registry=registry)
    except Exception as exc:
        # A taken port must not stop the node from classifying; say so loudly instead.
        log.error("visionq metrics disabled: cannot serve on %s:%d: %s",
                  settings.metrics_addr, port, exc)  # fmt: skip
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)
        return
    _enabled, _dir, _owner_pid, _server = True, path, os.getpid(), server
    _port = port


def _use_file_values(values: Any) -> None:
    """Make metrics created from now on (in the children) file-backed.

    ``prometheus_client.metrics`` looks up ``values.ValueClass`` at each metric's
    creation, so re-selecting it once the variable is set is enough, whoever imported
    prometheus_client first.
    """
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.get_value_class()
    if not getattr(values.ValueClass, "_multiprocess", False):
        raise RuntimeError("prometheus_client did not switch to multiprocess values")


def _metrics() -> SimpleNamespace:
    global _m
    if _m is None:
        from prometheus_client import Counter, Gauge, Histogram

        _m = SimpleNamespace(
            images=Counter(
                "visionq_images_total",
                "Images finished, by outcome and error type.",
                ["outcome", "error_type"],
            ),
            batch=Histogram(
                "visionq_batch_size", "Images per forward pass.", buckets=BATCH_BUCKETS
            ),
            decode=Histogram(
                "visionq_decode_seconds",
                "Open, decode and preprocess one image.",
                buckets=DECODE_BUCKETS,
            ),
            forward=Histogram(
                "visionq_forward_seconds",
                "One forward pass of a micro-batch.",
                buckets=FORWARD_BUCKETS,
            ),
            load=Histogram(
                "visionq_model_load_seconds",
                "Model load and warm-up time of a pool child.",
                buckets=LOAD_BUCKETS,
            ),
            # liveall: one series per child, to which the collector adds the pid
            # label itself (a pid label of our own would be dropped by live*sum
            # modes); the series goes away with the child (mark_process_dead).
            device=Gauge(
                "visionq_child_device",
                "1 for each live pool child, labelled with its device (and pid).",
                ["device"],
                multiprocess_mode="liveall",
            ),
        )
    return _m


def child_started(device: str, load_seconds: float) -> None:
    """In a pool child, once its model is warm."""
    if not _enabled:
        return
    m = _metrics()
    m.load.observe(load_seconds)
    m.device.labels(device=device).set(1)


def observe_image(ok: bool, error_type: str | None) -> None:
    """One image finished, by outcome and error type."""
    if not _enabled:
        return
    _metrics().images.labels(outcome="ok" if ok else "error", error_type=error_type or "none").inc()


def observe_decode(seconds: float) -> None:
    """Time to open, decode and preprocess one image."""
    if _enabled:
        _metrics().decode.observe(seconds)


def observe_batch(size: int, seconds: float) -> None:
    """One forward pass of ``size`` images."""
    if not _enabled:
        return
    m = _metrics()
    m.batch.observe(size)
    m.forward.observe(seconds)


def child_exited(pid: int) -> None:
    """In the parent or the child, when a pool child goes away."""
    if not _enabled or _dir is None:
        return
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, _dir)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead(path: str) -> list[int]:
    """Drop the live gauges of children that died without running their exit hook.

    A SIGKILLed or OOM-killed child never calls ``child_exited``; without this its
    ``child_device`` series would stay forever. Counters and histograms of dead
    children are kept on purpose: their work was done.
    """
    from prometheus_client import multiprocess

    dead = set()
    for f in glob.glob(os.path.join(path, "gauge_live*.db")):
        match = _LIVE_FILE.match(os.path.basename(f))
        if match and not _alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, path)
    return sorted(dead)


class _ReapingCollector:
    """MultiProcessCollector that first removes dead children's live gauges."""

    def __init__(self, registry: Any, path: str) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self._path = path
        self._inner = MultiProcessCollector(None, path=path)
        registry.register(self)

    def collect(self) -> Any:
        reap_dead(self._path)
        return self._inner.collect()


@worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    # Logged here rather than in setup_parent: at worker_init Celery has not set up
    # logging yet, so an INFO line there would be lost.
    if _enabled and _owner_pid == os.getpid():
        log.info("visionq metrics on :%d (multiprocess folder %s)", _port, _dir)


@worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    shutdown_parent()


def shutdown_parent() -> None:
    """Stop the endpoint and remove the folder; only in the process that created it."""
    global _enabled, _dir, _server
    if _owner_pid != os.getpid():
        return  # a forked child inherits the globals but owns nothing
    if _server is not None:
        with contextlib.suppress(Exception):
            _server.shutdown()
            _server.server_close()
        _server = None
    if _dir is not None:
        shutil.rmtree(_dir, ignore_errors=True)
        log.info("visionq metrics folder %s removed", _dir)
    os.environ.pop(MULTIPROC_ENV, None)
    _enabled, _dir = False, None
