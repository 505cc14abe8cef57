"""Folders through the whole system: each file once, symlink loops end."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import VISIONQ, cli_env
from tests.integration.harness import assert_exactly_once, make_corpus, read_records

pytestmark = pytest.mark.integration


def test_symlink_loops_and_links_give_each_file_once(clean_redis, start_worker, tmp_path):
    root = tmp_path / "photos"
    first = make_corpus(root, 1, names="a-{}.jpg".format)
    second = make_corpus(root / "sub", 1, seed=1, names="b-{}.jpg".format)
    os.symlink("..", root / "sub" / "up")  # two loops, as in the issue
    os.symlink(".", root / "self")
    os.symlink(str(root / "sub"), root / "sub-again")  # a folder reached twice
    os.link(first[0], root / "sub" / "hard-link.jpg")  # one file, two names
    start_worker(concurrency=2)
    out = tmp_path / "r.jsonl"
    proc = subprocess.run(
        [*VISIONQ, "submit", str(root), "--recursive", "--out", str(out),
         "--chunk-size", "1", "--timeout", "120", "--quiet"],
        env=cli_env(clean_redis, str(tmp_path / "state")),
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = read_records(out)
    assert_exactly_once("symlink loops", records, first + second)
    assert all(r["ok"] for r in records), records
