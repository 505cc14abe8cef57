"""Resuming into an output file never damages it, with real Redis and a prefork worker.

The images' names hold a line feed, a comma, a quote and bytes that are not UTF-8, so
the CSV and JSONL round trips are checked the way a user reads the files back (the
csv module, json), against the names' bytes as the file system holds them.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

from producer.client import Client
from producer.output import open_writer
from tests.conftest import VISIONQ, RedisTarget, cli_env
from tests.integration.harness import make_corpus
from visionq import protocol
from visionq.settings import Settings

pytestmark = pytest.mark.integration

NAMES = [
    "new\nline.jpg",
    "com,ma.jpg",
    'quo"te.jpg',
    os.fsdecode(b"not-utf8-\xff\xfe.jpg"),
    "caf\u00e9.jpg",
    "plain.jpg",
]
CHUNK = 2  # three chunks


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    dest = tmp_path / "odd names"
    make_corpus(dest, len(NAMES), names=NAMES.__getitem__)
    return dest


def _expected(folder: Path) -> list[bytes]:
    return sorted(os.path.join(os.fsencode(folder), n) for n in os.listdir(os.fsencode(folder)))


def _read_back(out: Path) -> list[bytes]:
    """Each record's path as bytes, read the way a user would."""
    if out.suffix == ".csv":
        with open(out, newline="", encoding="utf-8", errors="surrogateescape") as fh:
            return [os.fsencode(row["path"]) for row in csv.DictReader(fh)]
    text = out.read_bytes().decode("utf-8")  # strict: JSONL stays valid UTF-8
    return [os.fsencode(json.loads(line)["path"]) for line in text.splitlines()]


def _run(args: list[str], env: dict[str, str], timeout: float = 180):
    return subprocess.run([*VISIONQ, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def _submit_no_wait(folder: Path, env: dict[str, str]) -> str:
    sub = _run(["submit", str(folder), "--no-wait", "--chunk-size", str(CHUNK)], env, 60)
    assert sub.returncode == 0, sub.stderr
    return sub.stdout.strip()


def _collect_then_crash(target: RedisTarget, state: str, job_id: str, out: Path) -> None:
    """Write two chunks in full (each acknowledged, as collect does), then a third torn
    mid-write and never acknowledged: what a collector killed mid-write leaves."""
    settings = Settings(broker_url=target.broker_url, result_backend=target.backend_url,
                        state_dir=state)  # fmt: skip
    with Client(settings=settings) as client:
        chunks = client.job(job_id).iter_chunks(timeout=120)
        with open_writer(str(out)) as writer:
            for _ in range(2):
                _, records = next(chunks)
                writer.write_chunk(records)
            _, records = next(chunks)  # acknowledges the second chunk
            data = writer.encode(records)
        chunks.close()  # the third chunk stays unacknowledged, its result in Redis
    with open(out, "ab") as fh:
        fh.write(data[: data.index(b"\n") + 5])  # past one record end: the tear is mid-record


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_resume_refuses_damage_and_cuts_only_a_tear(
    clean_redis, start_worker, folder, tmp_path, suffix
):
    start_worker(concurrency=2)
    state = str(tmp_path / "state")
    env = cli_env(clean_redis, state)
    job_id = _submit_no_wait(folder, env)
    out = tmp_path / f"r{suffix}"
    _collect_then_crash(clean_redis, state, job_id, out)
    torn = out.read_bytes()

    # (2) a damaged record before the end: refused, exit 2, not one byte changed
    lines = torn.split(b"\n")
    lines[1] = lines[1][: len(lines[1]) // 2]
    damaged = b"\n".join(lines)
    out.write_bytes(damaged)
    col = _run(["collect", job_id, "--out", str(out), "--timeout", "60"], env)
    assert col.returncode == 2, col.stderr
    assert "left untouched" in col.stderr, col.stderr
    assert out.read_bytes() == damaged

    # one owner: while another writer holds the file, collect is refused
    out.write_bytes(torn)
    with open_writer(str(out)):
        col = _run(["collect", job_id, "--out", str(out), "--timeout", "60"], env)
    assert col.returncode == 2 and "another visionq process" in col.stderr, col.stderr
    assert out.read_bytes() == torn

    # (1) the torn last record is cut, the chunk re-collected: each image exactly once
    col = _run(["collect", job_id, "--out", str(out), "--timeout", "120"], env)
    assert col.returncode == 0, col.stderr
    assert "already in the file" in col.stderr, col.stderr
    assert sorted(_read_back(out)) == _expected(folder)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_foreign_out_is_refused_untouched(clean_redis, folder, tmp_path, suffix):
    env = cli_env(clean_redis, str(tmp_path / "state"))
    mine = tmp_path / f"notes{suffix}"
    content = b"my own notes, not visionq output\nsecond line\n"
    mine.write_bytes(content)

    # (3) submit --out starts a file fresh: it must not empty a foreign one
    sub = _run(["submit", str(folder), "--out", str(mine), "--timeout", "30"], env, 60)
    assert sub.returncode == 2, sub.stderr
    assert "does not hold visionq" in sub.stderr, sub.stderr
    assert mine.read_bytes() == content
    # refused before publishing: no job was created
    jobs = list(clean_redis.client().scan_iter(protocol.JOB_PREFIX + "*"))
    assert not jobs, "a job was published"

    # ... nor may collect resume into it
    job_id = _submit_no_wait(folder, env)
    col = _run(["collect", job_id, "--out", str(mine), "--timeout", "30"], env, 60)
    assert col.returncode == 2, col.stderr
    assert "does not hold visionq" in col.stderr, col.stderr
    assert mine.read_bytes() == content


def test_submit_round_trips_odd_names(clean_redis, start_worker, folder, tmp_path):
    """The plain path: submit straight into each format, names intact."""
    start_worker(concurrency=2)
    env = cli_env(clean_redis, str(tmp_path / "state"))
    for suffix in (".csv", ".jsonl"):
        out = tmp_path / f"all{suffix}"
        sub = _run(["submit", str(folder), "--out", str(out), "--chunk-size", str(CHUNK),
                    "--timeout", "120"], env)  # fmt: skip
        assert sub.returncode == 0, sub.stderr
        assert sorted(_read_back(out)) == _expected(folder)
