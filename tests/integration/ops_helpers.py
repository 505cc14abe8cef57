"""Helpers shared by the operations tests: a real Flower process, small jobs, polling."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from producer.client import Client
from producer.embedded import free_port, stop_group
from tests.conftest import ROOT, RedisTarget
from visionq.settings import Settings


class FlowerProcess:
    """Flower bound to 127.0.0.1 on a free port, optionally with basic auth."""

    def __init__(
        self, target: RedisTarget, log_path: Path, *, auth: tuple[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.auth = auth
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        args = [
            sys.executable, "-m", "celery", "-A", "workers", "flower",
            "--address=127.0.0.1", f"--port={self.port}",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VISIONQ_", "FLOWER_"))}
        if auth:
            # The environment form: --basic-auth on argv would show the password in ps.
            env["FLOWER_BASIC_AUTH"] = f"{auth[0]}:{auth[1]}"
        env.update(
            VISIONQ_BROKER_URL=target.broker_url,
            VISIONQ_RESULT_BACKEND=target.backend_url,
            PYTHONUNBUFFERED="1",
        )
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, env=env, cwd=str(ROOT), stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until /healthcheck answers (it needs no auth, by Flower's design)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.get("/healthcheck", auth=False)[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("flower did not start:\n" + self.log_text()[-3000:])
            time.sleep(0.2)

    def get(self, path: str, *, auth: bool = True, timeout: float = 10.0) -> tuple[int, bytes]:
        """(status, body) of a GET; HTTP errors are returned, not raised."""
        req = urllib.request.Request(self.base + path)
        if auth and self.auth:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get_json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_group(self.proc, grace=10)
        self._log.close()


def run_job(
    target: RedisTarget,
    paths: list[str],
    state_dir: Path,
    *,
    queue: str | None = None,
    chunk_size: int = 2,
    timeout: float = 120.0,
) -> list[dict[str, Any]]:
    """Submit ``paths`` through the Python API and return every record."""
    settings = Settings(
        broker_url=target.broker_url, result_backend=target.backend_url, state_dir=str(state_dir)
    )
    with Client(settings=settings) as client:
        job = client.submit(paths, chunk_size=chunk_size, queue=queue)
        return list(job.results(timeout=timeout))


def sample_paths() -> list[str]:
    return sorted(str(p) for p in (ROOT / "samples").glob("*.jpg"))
