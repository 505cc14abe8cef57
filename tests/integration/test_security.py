"""Security: VISIONQ_ALLOWED_ROOTS, JSON-only messages, Redis password and TLS.

The first three tests share one password-protected Redis and one worker confined to
an ``allowed`` folder; the password test restarts that Redis, so it runs last.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

from producer.client import Client
from producer.embedded import LocalWorker, RedisServer, free_port, stop_group
from tests.conftest import ROOT, RedisTarget, cli_env, worker_env
from tests.integration.harness import (
    assert_exactly_once,
    finish,
    make_corpus,
    read_records,
    visionq,
    wait_until,
)
from visionq.protocol import TASK_NAME
from visionq.schema import ErrorType
from visionq.settings import Settings

pytestmark = pytest.mark.integration

PASSWORD = "vq-S3cret-Pw-7d1f90"  # distinctive, so a grep of the logs is conclusive


@dataclass
class Stack:
    server: RedisServer
    target: RedisTarget
    worker: LocalWorker
    allowed: Path
    outside: Path
    state: str

    def settings(self) -> Settings:
        return Settings(
            broker_url=self.target.broker_url,
            result_backend=self.target.backend_url,
            state_dir=self.state,
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, weights_file: str) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("secure")
    allowed, outside = base / "allowed", base / "outside"
    allowed.mkdir()
    outside.mkdir()
    # TCP with a password: the password test restarts it at the same address.
    server = RedisServer(port=free_port(), password=PASSWORD).start()
    target = RedisTarget(server.url(0), server.url(1), server)
    state = str(base / "state")
    env = worker_env(target, weights_file, state, VISIONQ_ALLOWED_ROOTS=str(allowed))
    worker = LocalWorker(
        env, concurrency=2, name="secure@%h", extra_args=("--without-gossip", "--without-mingle"),
        log_path=str(base / "worker.log"), cwd=str(ROOT),
    )  # fmt: skip
    worker.start()
    stack = Stack(server, target, worker, allowed, outside, state)
    try:
        worker.wait_ready()
        yield stack
    finally:
        worker.stop()
        stack.server.stop()  # the password test replaces the server it started with


class BlockedWriter:
    """A thread blocked opening a FIFO for writing: it wakes only if someone opens the
    FIFO for reading. Still blocked afterwards = nobody ever opened the file."""

    def __init__(self, fifo: Path) -> None:
        self.fifo = fifo
        self.opened = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with open(self.fifo, "wb"):
            self.opened.set()

    def release(self) -> None:
        if not self.opened.is_set():
            fd = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
            self.thread.join(5)
            os.close(fd)


def test_allowed_roots_refuse_outside_paths_unopened(stack: Stack):
    inside = make_corpus(stack.allowed, 3, seed=11)
    outside_img = make_corpus(stack.outside, 1, seed=12)[0]
    evil = stack.allowed.parent / (stack.allowed.name + "-evil")  # shares the prefix
    evil_img = make_corpus(evil, 1, seed=13)[0]
    fifo = stack.outside / "fifo.jpg"
    os.mkfifo(fifo)
    os.symlink(fifo, stack.allowed / "link-to-fifo.jpg")
    os.symlink(outside_img, stack.allowed / "link-to-outside.jpg")
    os.symlink(stack.outside, stack.allowed / "link-to-folder")
    os.symlink(inside[0], stack.allowed / "link-inside.jpg")
    a, o = stack.allowed, stack.outside.name
    expected = {
        **dict.fromkeys(inside, None),
        str(a / "link-inside.jpg"): None,
        f"{a}/sub/../{Path(inside[1]).name}": None,
        str(fifo): ErrorType.PATH_NOT_ALLOWED,
        f"{a}/../{o}/fifo.jpg": ErrorType.PATH_NOT_ALLOWED,
        str(a / "link-to-fifo.jpg"): ErrorType.PATH_NOT_ALLOWED,
        str(a / "link-to-folder" / "fifo.jpg"): ErrorType.PATH_NOT_ALLOWED,
        outside_img: ErrorType.PATH_NOT_ALLOWED,
        f"{a}/../{o}/{Path(outside_img).name}": ErrorType.PATH_NOT_ALLOWED,
        str(a / "link-to-outside.jpg"): ErrorType.PATH_NOT_ALLOWED,
        evil_img: ErrorType.PATH_NOT_ALLOWED,
        "/dev/zero": ErrorType.PATH_NOT_ALLOWED,
        "/etc/passwd": ErrorType.PATH_NOT_ALLOWED,
    }
    writer = BlockedWriter(fifo)
    out = stack.allowed.parent / "roots.jsonl"
    try:
        with Client(settings=stack.settings()) as client:
            client.submit(list(expected), chunk_size=4).collect(str(out), timeout=120)
        time.sleep(0.5)
        assert not writer.opened.is_set(), "a worker opened the FIFO outside the roots"
    finally:
        writer.release()
    records = read_records(out)
    assert_exactly_once("allowed roots", records, expected)
    for r in records:
        assert (r["error"] or {}).get("type") == expected[r["path"]], r
        if not r["ok"]:
            assert "VISIONQ_ALLOWED_ROOTS" in r["error"]["message"]


def test_task_with_an_unsafe_job_id_is_refused_by_the_worker(stack: Stack):
    """A task published by someone else names its own job id: a glob must not become
    Redis keys or patterns in the worker."""
    img = make_corpus(stack.allowed / "jid", 1, seed=17)[0]
    with Client(settings=stack.settings()) as client:
        client.celery.send_task(TASK_NAME, args=("evil*job", 0, [img], 5), task_id="evil*job:0",
                                queue="visionq")  # fmt: skip
        wait_until(lambda: "refusing a task of an invalid job" in stack.worker.log_text(), 30,
                   "the worker to refuse the task")  # fmt: skip
        assert not list(client.redis.scan_iter(match="visionq:job:evil*"))
    assert stack.worker.proc.poll() is None


def test_pickle_message_is_refused(stack: Stack, tmp_path: Path):
    marker = tmp_path / "pickle-ran"

    class Exploit:
        def __reduce__(self) -> tuple:
            return (open, (str(marker), "w"))

    body = ((Exploit(), 0, [], 5), {}, {"callbacks": None, "errbacks": None, "chain": None})
    headers = {"lang": "py", "task": "visionq.classify", "id": "evil:0", "retries": 0,
               "root_id": "evil:0", "parent_id": None, "group": None}  # fmt: skip
    queue = Queue("visionq", Exchange("visionq", "direct"), "visionq")
    with Connection(stack.target.broker_url) as conn:
        conn.Producer().publish(
            pickle.dumps(body), routing_key="visionq", exchange=queue.exchange,
            content_type="application/x-python-serialize", content_encoding="binary",
            headers=headers, declare=[queue],
        )  # fmt: skip
    wait_until(lambda: "untrusted content" in stack.worker.log_text(), 30, "the refusal")
    assert not marker.exists(), "the worker unpickled a message"
    assert stack.worker.proc.poll() is None
    # ... and goes on serving JSON jobs.
    with Client(settings=stack.settings()) as client:
        records = list(client.submit(make_corpus(stack.allowed / "p", 3, seed=21)).results(60))
    assert len(records) == 3 and all(r["ok"] for r in records)


def test_password_redis_end_to_end_never_logs_it(stack: Stack, tmp_path: Path):
    paths = make_corpus(stack.allowed / "pw", 16, seed=31)
    env = cli_env(stack.target, stack.state)
    out = tmp_path / "r.jsonl"
    rc, _, err = finish(visionq(["submit", *paths, "--out", str(out), "--timeout", "120"],
                                env), 150)  # fmt: skip
    assert rc == 0, err
    assert_exactly_once("password Redis", read_records(out), paths)
    assert PASSWORD not in err

    # Connection errors are where URLs leak: make the worker go through some.
    port = stack.server.port
    stack.server.stop()
    time.sleep(1)
    stack.server = RedisServer(port=port, password=PASSWORD).start()
    wait_until(lambda: stack.worker.log_text().count("Connected to redis://") >= 2, 60,
               "the worker to reconnect")  # fmt: skip
    rc, _, err = finish(visionq(["submit", *paths[:4], "--out", str(tmp_path / "r2.jsonl"),
                                 "--timeout", "120"], env), 150)  # fmt: skip
    assert rc == 0, err

    wrong = cli_env(
        RedisTarget(stack.target.broker_url.replace(PASSWORD, "wrong-" + PASSWORD),
                    stack.target.backend_url.replace(PASSWORD, "wrong-" + PASSWORD)),
        stack.state, VISIONQ_REDIS_TIMEOUT="2",
    )  # fmt: skip
    rc, _, err = finish(visionq(["submit", paths[0]], wrong), 60)
    assert rc == 3 and "cannot reach Redis" in err, err
    assert PASSWORD not in err

    log = stack.worker.log_text()
    assert "Cannot connect to redis://" in log  # the error path was taken...
    assert PASSWORD not in log  # ... and printed no password
    assert PASSWORD not in out.read_text()


# -- TLS --------------------------------------------------------------------------------


def _make_certs(folder: Path, san: str = "IP:127.0.0.1,DNS:localhost") -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for ``san``, signed by it."""
    names = ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    ca_key, ca, key, csr, cert = (folder / n for n in names)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
            "-out", str(ca), "-days", "1", "-subj", "/CN=visionq-test-ca")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    ext = folder / "san.ext"
    ext.write_text(f"subjectAltName={san}\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext))  # fmt: skip
    return ca, cert, key


@contextlib.contextmanager
def tls_redis(folder: Path, san: str | None = None) -> Iterator[tuple[int, Path]]:
    """redis-server with TLS only (no plain port) and a password; yields (port, CA).

    With ``san`` the server's certificate names those hosts instead of 127.0.0.1."""
    binary = shutil.which("redis-server")
    if not binary or not shutil.which("openssl"):
        pytest.skip("TLS test needs redis-server and openssl on PATH")
    ca, cert, key = _make_certs(folder, san) if san else _make_certs(folder)
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
         "--tls-auth-clients", "no", "--requirepass", PASSWORD, "--save", "",
         "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        import redis

        probe = redis.Redis.from_url(_tls_url(port, ca, 0), socket_connect_timeout=1,
                                     ssl_check_hostname=not san)  # fmt: skip
        deadline = time.monotonic() + 15
        while True:
            try:
                probe.ping()
                break
            except redis.RedisError as exc:
                if proc.poll() is not None:
                    out = proc.stdout.read().decode() if proc.stdout else ""
                    pytest.skip(f"this redis-server does not support TLS: {out[-500:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"TLS Redis did not come up: {exc}") from None
                time.sleep(0.1)
        yield port, ca
    finally:
        stop_group(proc, grace=5)


def _tls_url(port: int, ca: Path | None, db: int) -> str:
    query = f"?ssl_cert_reqs=required&ssl_ca_certs={ca}" if ca else ""
    return f"rediss://:{PASSWORD}@127.0.0.1:{port}/{db}{query}"


def test_tls_redis_end_to_end(start_worker, tmp_path: Path, weights_file: str):
    with tls_redis(tmp_path) as (port, ca):
        urls = {"VISIONQ_BROKER_URL": _tls_url(port, ca, 0),
                "VISIONQ_RESULT_BACKEND": _tls_url(port, ca, 1)}  # fmt: skip
        worker = start_worker(concurrency=2, **urls)
        paths = make_corpus(tmp_path / "imgs", 16, seed=41)
        env = cli_env(RedisTarget(urls["VISIONQ_BROKER_URL"], urls["VISIONQ_RESULT_BACKEND"]),
                      str(tmp_path / "state"))  # fmt: skip
        out = tmp_path / "r.jsonl"
        rc, _, err = finish(visionq(["submit", *paths, "--out", str(out), "--timeout", "120"],
                                    env), 150)  # fmt: skip
        assert rc == 0, err
        assert_exactly_once("TLS Redis", read_records(out), paths)
        assert PASSWORD not in worker.log_text() and PASSWORD not in err

        # rediss:// without ssl_* parameters must still verify the server (against the
        # system CAs, which do not know this throwaway CA), not fall back to CERT_NONE.
        bare = {"VISIONQ_BROKER_URL": _tls_url(port, None, 0),
                "VISIONQ_RESULT_BACKEND": _tls_url(port, None, 1)}  # fmt: skip
        unverified = start_worker(concurrency=1, name="bare@%h", wait=False, **bare)
        try:
            wait_until(lambda: "certificate verify failed" in unverified.log_text(), 60,
                       "the unverifiable server to be refused")  # fmt: skip
            assert "Connected to" not in unverified.log_text()
        finally:
            os.killpg(unverified.proc.pid, signal.SIGKILL)
        env_bare = cli_env(RedisTarget(bare["VISIONQ_BROKER_URL"], bare["VISIONQ_RESULT_BACKEND"]),
                           str(tmp_path / "state"), VISIONQ_REDIS_TIMEOUT="2")  # fmt: skip
        rc, _, err = finish(visionq(["submit", paths[0]], env_bare), 60)
        assert rc == 3 and "certificate verify failed" in err, err


def test_tls_refuses_a_certificate_issued_for_another_name(start_worker, tmp_path: Path):
    """A certificate from a trusted CA, but for another host: the man in the middle who
    holds any valid certificate. Broker, backend and producer must all refuse it."""
    with tls_redis(tmp_path, san="DNS:redis.other.example") as (port, ca):
        paths = make_corpus(tmp_path / "imgs", 2, seed=51)
        # The CA is trusted twice over: named in the URL, and as the system store (so the
        # bare rediss:// URL, which gets visionq's own TLS defaults, trusts it too). Only
        # the name is wrong.
        for with_params in (True, False):
            url_ca = ca if with_params else None
            urls = {"VISIONQ_BROKER_URL": _tls_url(port, url_ca, 0),
                    "VISIONQ_RESULT_BACKEND": _tls_url(port, url_ca, 1)}  # fmt: skip
            name = f"wrongname{int(with_params)}@%h"
            worker = start_worker(concurrency=1, name=name, wait=False, SSL_CERT_FILE=str(ca),
                                  **urls)  # fmt: skip
            try:
                wait_until(lambda w=worker: "mismatch" in w.log_text(), 90,
                           "the wrong-name certificate to be refused")  # fmt: skip
                assert "Connected to" not in worker.log_text()
            finally:
                os.killpg(worker.proc.pid, signal.SIGKILL)
            env = cli_env(RedisTarget(urls["VISIONQ_BROKER_URL"], urls["VISIONQ_RESULT_BACKEND"]),
                          str(tmp_path / "state"), VISIONQ_REDIS_TIMEOUT="2",
                          SSL_CERT_FILE=str(ca))  # fmt: skip
            rc, _, err = finish(visionq(["submit", *paths], env), 60)
            assert rc == 3 and "mismatch" in err, err
            assert PASSWORD not in err
