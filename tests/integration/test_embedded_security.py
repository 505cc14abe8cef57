"""The private Redis of `visionq run`: reachable by nobody but its owner.

Each test checks what another local process sees: no TCP listener, a socket in a
folder other users cannot enter, and a password that the owner's own processes need.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from producer.embedded import RedisServer
from tests.conftest import VISIONQ, bare_env

pytestmark = pytest.mark.integration


def tcp_listeners(pid: int) -> list[str]:
    """Listening TCP sockets (v4 and v6) held by process ``pid``, as table rows."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in list(fh)[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A = LISTEN
                    rows.append(line.strip())
    return rows


def ping_from_another_process(socket_path: str, password: str | None) -> str:
    """What a separate process gets when it PINGs over the socket."""
    code = (
        "import redis, sys\n"
        "try:\n"
        f"    print(redis.Redis(unix_socket_path={socket_path!r}, password={password!r},"
        " socket_timeout=5).ping())\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    return proc.stdout.strip() + proc.stderr.strip()


def connect_as_nobody(socket_path: str) -> str:
    """connect() to the socket as uid 65534; needs root to drop to it."""
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({socket_path!r}); print('connected')\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         os.path.realpath("/usr/bin/python3"), "-c", code],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return proc.stdout.strip() or proc.stderr.strip()


def assert_locked(pid: int, socket_path: str, password: str) -> None:
    assert tcp_listeners(pid) == [], "the private Redis listens on TCP"
    folder = os.path.dirname(socket_path)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(socket_path).st_mode) & 0o077 == 0
    refused = ping_from_another_process(socket_path, None)
    assert "Authentication" in refused or "NOAUTH" in refused, refused
    assert ping_from_another_process(socket_path, password) == "True"
    if os.geteuid() == 0 and os.path.exists("/usr/bin/setpriv"):
        assert connect_as_nobody(socket_path) == "PermissionError"


def test_private_redis_has_no_tcp_port_a_0700_socket_and_a_password():
    with RedisServer() as server:
        assert server.proc is not None and server.socket_path and server.password
        assert len(server.password) >= 32
        assert_locked(server.proc.pid, server.socket_path, server.password)
        # The password never appears on a command line that `ps` shows everyone.
        cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().decode()
        assert server.password not in cmdline
        # Broker, backend and redis-py all reach it through the socket URL.
        from kombu import Connection

        with Connection(server.url(0)) as conn:
            conn.default_channel.client.set("k", "v")
        assert server.client(0).get("k") == b"v"


def _process(mark: str) -> tuple[int, str] | None:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if mark in cmd:
            return int(pid), cmd
    return None


def test_run_keeps_its_redis_private_and_confines_its_worker(sample_dir, weights_file, tmp_path):
    listing = tmp_path / "paths.txt"
    listing.write_text("".join(f"{sample_dir}/missing-{i}.jpg\n" for i in range(600)))
    extra = tmp_path / "other"
    extra.mkdir()
    env = bare_env(VISIONQ_STATE_DIR=str(tmp_path / "state"))
    proc = subprocess.Popen(
        [*VISIONQ, "run", str(extra), "--from-file", str(listing), "--out",
         str(tmp_path / "r.jsonl"), "--weights", weights_file, "--chunk-size", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while (server := _process("visionq-redis-")) is None or _process("visionq-run@") is None:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "visionq run never started its stack"
            time.sleep(0.1)
        worker_pid, _ = _process("visionq-run@")  # type: ignore[misc]
        environ = dict(
            item.split("=", 1)
            for item in Path(f"/proc/{worker_pid}/environ").read_bytes().decode().split("\0")
            if "=" in item
        )
        broker = environ["VISIONQ_BROKER_URL"]
        assert broker.startswith("redis+socket://:"), "the worker is not on the socket"
        password = broker.split("://:", 1)[1].split("@", 1)[0]
        socket_path = broker.split("@", 1)[1].split("?", 1)[0]
        assert_locked(server[0], socket_path, password)
        roots = set(environ["VISIONQ_ALLOWED_ROOTS"].split(os.pathsep))
        assert roots == {str(extra), *(line for line in listing.read_text().splitlines())}
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
