"""Every setting visionq reads, in one place.

Each field of :class:`Settings` maps to one ``VISIONQ_*`` environment variable. The
environment is read only by :meth:`Settings.from_env`, called at the edges (the
Celery app, the CLI); everything else receives a ``Settings`` value. The README's
configuration table is this file in prose: keep them in step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from visionq.redisurl import is_socket, socket_with_db
from visionq.urls import split_roots

PREFIX = "VISIONQ_"

DEVICE_CHOICES = ("auto", "cpu", "cuda")
PRECISION_CHOICES = ("fp32", "bf16", "fp16", "int8", "auto")
DECODE_CHOICES = ("cpu", "gpu")


class SettingsError(ValueError):
    """A VISIONQ_* variable holds a value that cannot be used."""


def _env_field(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Settings:
    """Configuration shared by the workers and the producer."""

    broker_url: str = _env_field("redis://localhost:6379/0", "Celery broker (Redis) URL.")
    result_backend: str = _env_field(
        "", "Result backend URL; empty means the broker URL with database 1."
    )
    queue: str = _env_field("visionq", "Queue the worker consumes and the producer publishes to.")
    device: str = _env_field("auto", "auto, cpu, cuda or cuda:N; auto picks CUDA when present.")
    threads: int = _env_field(0, "Torch threads per CPU child; 0 means max(1, cores // children).")
    weights: str = _env_field(
        "imagenet", "imagenet (torchvision IMAGENET1K_V1), random, or a state_dict file path."
    )
    precision: str = _env_field(
        "fp32",
        "fp32 (exact), bf16 (CPU autocast or CUDA), fp16 (CUDA), int8 (CPU, opt-in), or auto "
        "(the fastest of fp32 and bf16, or fp16 on CUDA, measured by each child at start-up).",
    )
    int8_calibration: str = _env_field(
        "", "Folder of images that calibrates VISIONQ_PRECISION=int8 (the first 64 are used)."
    )
    batch_size: int = _env_field(0, "Images per forward pass; 0 means 8 on CPU, 64 on CUDA.")
    chunk_size: int = _env_field(
        0, "Paths per task; 0 sizes chunks from the work left and the fleet (recommended)."
    )
    chunk_seconds: float = _env_field(
        20.0, "Self-sized chunks hold at most about this many seconds of one child's work."
    )
    window: int = _env_field(
        0, "Chunks in flight per job while collecting; 0 means 2 per pool child, plus 1."
    )
    decode: str = _env_field(
        "cpu", "cpu, or gpu: JPEGs decoded in batches on the child's CUDA device (not bit-exact)."
    )
    jpeg_draft: bool = _env_field(
        False, "Let libjpeg decode large JPEGs at reduced scale (faster, not bit-exact)."
    )
    visibility_timeout: int = _env_field(
        3600, "Seconds before Redis redelivers an unacknowledged task (dead node)."
    )
    task_time_limit: int = _env_field(
        600, "Hard per-task limit in seconds; capped below the visibility timeout."
    )
    max_attempts: int = _env_field(
        3, "Deliveries of a chunk before it is processed image by image to isolate a culprit."
    )
    allowed_roots: str = _env_field(
        "",
        "Folders and URL prefixes (os.pathsep separated) the worker may read; empty allows any.",
    )
    path_map: str = _env_field(
        "", "Prefix rewrites 'FROM=TO' separated by ';', for hosts mounting files elsewhere."
    )
    max_image_bytes: int = _env_field(64 * 1024 * 1024, "Largest image file accepted, in bytes.")
    max_image_pixels: int = _env_field(
        89_478_485, "Largest decoded image in pixels; bigger is a decompression bomb."
    )
    result_expires: int = _env_field(
        86_400, "Seconds a job's keys and results stay in Redis after its last activity."
    )
    proc_alive_timeout: float = _env_field(
        120.0, "Seconds a pool child may take to load and warm its model."
    )
    redis_timeout: float = _env_field(
        30.0, "Seconds the producer retries an unreachable Redis before giving up."
    )
    stall_timeout: float = _env_field(
        300.0, "Seconds without any result before the producer re-publishes pending chunks."
    )
    consumer_patience: float = _env_field(
        30.0,
        "Seconds a worker may hold no task while its queue has some before it reconnects "
        "its consumer (a consumer stuck after a broker restart); 0 turns the check off.",
    )
    state_dir: str = _env_field(
        "", "Where the producer keeps local job manifests; empty means ~/.local/state/visionq."
    )
    fetch_concurrency: int = _env_field(
        8, "URL fetches in flight per pool child, ahead of its decoder and model."
    )
    fetch_ahead_bytes: int = _env_field(
        64 * 1024 * 1024, "Bytes of fetched, not yet decoded images one pool child may hold."
    )
    fetch_timeout: float = _env_field(
        30.0, "Seconds to connect, and between bytes of a body, before a fetch is retried."
    )
    fetch_retries: int = _env_field(
        3, "Retries (with backoff) of a fetch that timed out, failed to connect or got a 5xx."
    )
    metrics_port: int = _env_field(0, "Port of the worker's Prometheus endpoint; 0 is off.")
    metrics_addr: str = _env_field(
        "127.0.0.1", "Address the Prometheus endpoint binds; 0.0.0.0 serves other hosts too."
    )
    log_level: str = _env_field("INFO", "Log level of visionq's own loggers.")

    # -- derived values -------------------------------------------------------------

    @property
    def backend_url(self) -> str:
        return self.result_backend or _with_db(self.broker_url, 1)

    @property
    def effective_time_limit(self) -> int:
        # A task that outlives the visibility timeout is redelivered while it still runs
        # (celery#5935), so the hard limit always stays below it.
        return max(5, min(self.task_time_limit, int(self.visibility_timeout * 0.8)))

    @property
    def roots(self) -> tuple[str, ...]:
        return split_roots(self.allowed_roots)

    @property
    def path_rewrites(self) -> tuple[tuple[str, str], ...]:
        pairs = []
        for item in self.path_map.split(";"):
            if not item.strip():
                continue
            src, sep, dst = item.partition("=")
            if not sep or not src:
                raise SettingsError(f"VISIONQ_PATH_MAP entry {item!r} is not FROM=TO")
            pairs.append((src.strip(), dst.strip()))
        # Longest prefix first, so /data/a=... wins over /data=...
        return tuple(sorted(pairs, key=lambda p: -len(p[0])))

    @property
    def state_path(self) -> str:
        if self.state_dir:
            return self.state_dir
        base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        return os.path.join(base, "visionq")

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _coerce(f.name, raw, type(f.default))
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def replace(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def validate(self) -> None:
        dev = self.device
        if not (dev in DEVICE_CHOICES or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise SettingsError(f"VISIONQ_DEVICE={dev!r}; expected one of auto, cpu, cuda, cuda:N")
        if self.precision not in PRECISION_CHOICES:
            raise SettingsError(
                f"VISIONQ_PRECISION={self.precision!r}; expected one of "
                + ", ".join(PRECISION_CHOICES)
            )
        if self.decode not in DECODE_CHOICES:
            raise SettingsError(f"VISIONQ_DECODE={self.decode!r}; expected cpu or gpu")
        for name in (
            "visibility_timeout", "task_time_limit", "max_attempts", "result_expires",
            "chunk_seconds", "fetch_concurrency", "fetch_ahead_bytes", "fetch_timeout",
        ):  # fmt: skip
            if getattr(self, name) <= 0:
                raise SettingsError(f"VISIONQ_{name.upper()} must be positive")
        if self.chunk_size < 0 or self.window < 0:
            raise SettingsError("VISIONQ_CHUNK_SIZE and VISIONQ_WINDOW must be 0 or more")
        self.path_rewrites  # noqa: B018 - parses VISIONQ_PATH_MAP so errors surface early

    @classmethod
    def documented(cls) -> list[tuple[str, Any, str]]:
        """(variable, default, meaning) rows, for the README table and `--help`."""
        return [(PREFIX + f.name.upper(), f.default, f.metadata["doc"]) for f in fields(cls)]


def _coerce(name: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError:
        raise SettingsError(
            f"{PREFIX}{name.upper()}={raw!r} is not a valid {kind.__name__}"
        ) from None


def _with_db(url: str, db: int) -> str:
    """The same Redis server as ``url`` but database ``db``."""
    if is_socket(url):
        return socket_with_db(url, db)
    base, _, query = url.partition("?")
    scheme, sep, rest = base.partition("://")
    host, _slash, _path = rest.partition("/")
    out = f"{scheme}{sep}{host}/{db}"
    return f"{out}?{query}" if query else out
