"""Real servers on loopback for URL inputs: a slow HTTP file server and a moto S3 server.

Both bind 127.0.0.1 on a free port, are started by the test that needs them and are
stopped afterwards. The HTTP server can answer with chosen statuses and redirects, add
latency to every request, and be taken down and brought back on the same port.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real object stores and CDNs
    # Headers and body go out in two writes; with Nagle on, the body then waits for the
    # client's delayed ACK (about 40 ms on Linux) on every keep-alive request. Servers
    # that hold connections open set TCP_NODELAY.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        site = self.server.site
        if site.down:
            # Down: drop the connection without a word, as a dead host would.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        site.requests += 1
        if site.latency:
            time.sleep(site.latency)
        path = self.path.split("?", 1)[0]
        if path in site.redirects:
            self._reply(302, b"", {"Location": site.redirects[path]}, body)
            return
        if path in site.statuses:
            self._reply(site.statuses[path], b"no", {}, body)
            return
        file = site.root / path.lstrip("/")
        if not file.resolve().is_relative_to(site.root.resolve()) or not file.is_file():
            self._reply(404, b"not found", {}, body)
            return
        self._reply(200, file.read_bytes(), {}, body, sized=path not in site.unsized)

    def _reply(
        self, code: int, data: bytes, headers: dict[str, str], body: bool, sized: bool = True
    ) -> None:
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        if sized:
            self.send_header("Content-Length", str(len(data)))
        else:  # the body ends when the connection closes: its size is unknown upfront
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if body:
            self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    site: HTTPSite

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hang up mid-body on purpose (size limits, cancelled fetches).
        pass


class HTTPSite:
    """Files under ``root`` served at ``http://127.0.0.1:<port>/<relative path>``."""

    def __init__(self, root: Path, *, latency: float = 0.0, port: int | None = None) -> None:
        self.root = root
        self.latency = latency
        self.port = port or free_port()
        self.statuses: dict[str, int] = {}
        self.redirects: dict[str, str] = {}
        self.unsized: set[str] = set()  # paths served without Content-Length
        self.down = False
        self.requests = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def url(self, rel: str) -> str:
        return self.base + rel.lstrip("/")

    def start(self) -> HTTPSite:
        self.down = False
        self._server = _Server(("127.0.0.1", self.port), _Handler)
        self._server.site = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Refuse new connections and drop open keep-alive ones."""
        self.down = True
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HTTPSite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class S3Store:
    """A moto S3 server on loopback, and the standard AWS variables that reach it."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, home: Path) -> dict[str, str]:
        """AWS settings for a process talking to this server, never to a real cloud."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(home / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )  # fmt: skip

    def fill(self, bucket: str, files: dict[str, Path | bytes]) -> None:
        s3 = self.client()
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=bucket)
        for key, src in files.items():
            data = src if isinstance(src, bytes) else Path(src).read_bytes()
            s3.put_object(Bucket=bucket, Key=key, Body=data)

    def start(self) -> S3Store:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()


@contextlib.contextmanager
def env_vars(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration (for in-process code under test)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
