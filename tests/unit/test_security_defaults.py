"""Defaults that keep untrusted names, hosts and libraries apart (no Redis needed)."""

from __future__ import annotations

import argparse
import os
import ssl
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from producer.embedded import free_port
from tests.conftest import bare_env
from visionq import protocol
from visionq.settings import Settings

# Looked up at call time, so each test fails on its own where the code lacks them.
InvalidJobId = getattr(protocol, "InvalidJobId", ValueError)


def validate_job_id(job_id: str) -> str:
    return protocol.validate_job_id(job_id)


ROOT = Path(__file__).resolve().parents[2]


def _requirement(name: str) -> str:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return next(r for r in reqs if r.lower().startswith(name))


# -- job ids ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "job_id",
    ["../escape", "a/b", "*", "job?", "[ab]", "a:1", "", ".hidden", "a b", "x\x00", "é", "a" * 129],
)
def test_unsafe_job_ids_are_refused(job_id):
    with pytest.raises(InvalidJobId, match="invalid job id"):
        validate_job_id(job_id)


@pytest.mark.parametrize("job_id", ["0123456789abcdef0123456789abcdef", "nightly-2026_11", "J"])
def test_safe_job_ids_pass(job_id):
    assert validate_job_id(job_id) == job_id


def test_client_refuses_a_job_id_that_would_name_a_file_outside_the_state_folder(tmp_path):
    from producer.client import Client

    state = tmp_path / "state"
    settings = Settings(broker_url=f"redis://127.0.0.1:{free_port()}/0", state_dir=str(state),
                        redis_timeout=0.5)  # fmt: skip
    with Client(settings=settings) as client:
        with pytest.raises(InvalidJobId):
            client.submit(["/x.jpg"], job_id="../escape")
        with pytest.raises(InvalidJobId):
            client.job("*")
    assert not list(tmp_path.rglob("escape*"))


def test_cli_collect_refuses_an_unsafe_job_id_before_connecting(tmp_path):
    env = bare_env(
        VISIONQ_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0",
        VISIONQ_STATE_DIR=str(tmp_path / "state"),
        VISIONQ_REDIS_TIMEOUT="1",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "producer.cli", "collect", "../../etc/x", "--out",
         str(tmp_path / "r.jsonl")],
        env=env, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "invalid job id" in proc.stderr


# -- TLS ----------------------------------------------------------------------------------


def test_tls_checks_the_server_name_explicitly():
    from visionq.celeryconf import celery_config, redis_client_options, tls_defaults

    url = "rediss://:pw@redis.example:6380/0"
    assert tls_defaults(url) == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}
    conf = celery_config(Settings(broker_url=url))
    assert conf["broker_use_ssl"]["ssl_check_hostname"] is True
    assert conf["redis_backend_use_ssl"]["ssl_check_hostname"] is True
    assert redis_client_options(url) == {"ssl_check_hostname": True}
    assert redis_client_options("redis://h:6379/0") == {}


def test_redis_py_floor_checks_hostnames_by_default():
    from packaging.requirements import Requirement

    spec = Requirement(_requirement("redis")).specifier
    # redis-py 6.0 made ssl_check_hostname default to True (redis-py#3626); URLs that
    # bring their own ssl_* parameters rely on that default.
    assert not spec.contains("5.2.1") and spec.contains(version("redis"))


# -- Pillow -------------------------------------------------------------------------------


def test_pillow_floor_is_a_patched_release_and_installed():
    from packaging.requirements import Requirement

    spec = Requirement(_requirement("pillow")).specifier
    assert not spec.contains("12.3.0"), "12.x lacks 13.0's JPEG/TIFF decoder fixes"
    assert spec.contains(version("pillow")), f"installed Pillow {version('pillow')} is below"


# -- visionq run's allowed roots -----------------------------------------------------------


def _args(paths: list[str], from_file: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(paths=paths, from_file=from_file)


def test_run_roots_are_exactly_the_inputs(tmp_path):
    from producer.cli import _run_roots

    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path}/a/1.jpg\n{tmp_path}/b/2.jpg\n")
    args = _args([str(tmp_path / "c")], str(listing))
    roots = _run_roots(args)
    assert set(roots.split(os.pathsep)) == {
        f"{tmp_path}/a/1.jpg",
        f"{tmp_path}/b/2.jpg",
        f"{tmp_path}/c",
    }
    assert args.from_file is None and len(args.paths) == 3  # the listing is read once


def test_run_roots_read_a_listing_as_submit_does(tmp_path):
    from producer.cli import _run_roots

    # A name that is not UTF-8 (a surrogate escape, as Python gives it) and one with a
    # carriage return inside: one path per line, each kept intact.
    odd = os.fsencode(f"{tmp_path}/") + b"caf\xe9.jpg"
    listing = tmp_path / "list.txt"
    listing.write_bytes(odd + b"\n" + os.fsencode(f"{tmp_path}/a\rb.jpg") + b"\n")
    roots = _run_roots(_args([], str(listing)))
    assert set(roots.split(os.pathsep)) == {os.fsdecode(odd), f"{tmp_path}/a\rb.jpg"}


def test_run_roots_too_long_for_one_variable_collapse_to_the_common_folder(tmp_path):
    from producer.cli import _run_roots

    many = [f"{tmp_path}/deep/{i:06d}-{'x' * 80}.jpg" for i in range(2000)]
    assert _run_roots(_args(many)) == f"{tmp_path}/deep"


# -- metrics ------------------------------------------------------------------------------


def _listening_addresses(port: int) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in list(fh)[1:]:
                cols = line.split()
                addr, _, hexport = cols[1].partition(":")
                if cols[3] == "0A" and int(hexport, 16) == port:
                    found.add(addr)
    return found


@pytest.mark.parametrize(("addr", "hexaddr"), [(None, "0100007F"), ("0.0.0.0", "00000000")])
def test_metrics_bind_loopback_unless_told_otherwise(tmp_path, addr, hexaddr):
    port = free_port()
    env = bare_env(VISIONQ_METRICS_PORT=str(port))
    if addr:
        env["VISIONQ_METRICS_ADDR"] = addr
    code = (
        "import time\n"
        "from visionq.settings import Settings\n"
        "from workers import metrics\n"
        "metrics.setup_parent(Settings.from_env())\n"
        "print('up', flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        deadline = time.monotonic() + 10
        while not (found := _listening_addresses(port)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert found == {hexaddr}, found
    finally:
        proc.kill()
        proc.wait()
