"""The Flower dashboard in headless Chromium: it loads behind basic auth and shows the worker.

The screenshot goes to the test's temporary folder; with ``VISIONQ_UPDATE_SCREENSHOT=1``
it replaces ``docs/flower.png``, the picture the docs show. The node name is fixed (no
``%h``) so that the committed picture names no real host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, RedisTarget
from tests.integration.ops_helpers import FlowerProcess, run_job, sample_paths

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
NODE = "visionq-demo@worker1"
AUTH = ("admin", "change-me")
DOCS_SCREENSHOT = ROOT / "docs" / "flower.png"


def _chromium() -> str | None:
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[list[str]]:
    binary = _chromium()
    if binary is None:
        pytest.skip(
            "Chromium not found (/usr/bin/chromium); install Debian's chromium package "
            "to run the browser test (.ci/run does so as root)"
        )
    # The flags that work on a machine without outside network: no sandbox (root in a
    # container), and none of the background connections Chromium would otherwise try.
    yield [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1280,800", "--virtual-time-budget=5000",
    ]  # fmt: skip


def _run(cmd: list[str], timeout: float = 90) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return proc


def test_dashboard_shows_worker_and_screenshot(
    clean_redis: RedisTarget, start_worker, chromium: list[str], tmp_path: Path
) -> None:
    flower = FlowerProcess(clean_redis, tmp_path / "flower.log", auth=AUTH)
    try:
        worker = start_worker(concurrency=1, name=NODE, wait=False)
        flower.wait_ready()
        worker.wait_ready()
        # A finished job, so the dashboard shows counts rather than an idle node.
        records = run_job(clean_redis, sample_paths(), tmp_path / "state", chunk_size=2)
        assert all(r["ok"] for r in records)

        # Credentials in the URL work for the top-level page in Chromium.
        authed = f"http://{AUTH[0]}:{AUTH[1]}@127.0.0.1:{flower.port}/"
        dom = _run([*chromium, "--dump-dom", authed]).stdout.decode(errors="replace")
        assert NODE in dom, dom[-2000:]
        assert "Online" in dom

        anonymous = _run([*chromium, "--dump-dom", flower.base + "/"]).stdout.decode()
        assert NODE not in anonymous  # 401: nothing leaks without credentials

        update = os.environ.get("VISIONQ_UPDATE_SCREENSHOT") == "1"
        shot = DOCS_SCREENSHOT if update else tmp_path / "flower.png"
        _run([*chromium, f"--screenshot={shot}", authed])
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    finally:
        flower.stop()
