"""Images from URLs, end to end: a real prefork worker reads from real servers on loopback.

An S3-compatible store (moto's server) and a slow HTTP file server are started by each
test and stopped afterwards. The worker reaches S3 through the standard AWS variables
(AWS_ENDPOINT_URL included) and nothing else.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import VISIONQ, cli_env
from tests.images import reference_probs
from tests.integration.harness import (
    assert_exactly_once,
    finish,
    line_count,
    make_corpus,
    read_records,
    visionq,
    wait_until,
    write_list,
)
from tests.stores import HTTPSite, S3Store
from visionq.schema import ErrorType

pytestmark = pytest.mark.integration
pytest.importorskip("s3fs")
pytest.importorskip("moto.server")


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Store]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    store = S3Store().start()
    try:
        yield store
    finally:
        store.stop()


def _run(args: list[str], env: dict[str, str], timeout: float = 180) -> None:
    proc = subprocess.run(
        [*VISIONQ, *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr


def _assert_parity(records: list[dict], local_of: dict[str, str], weights: str) -> None:
    """Probabilities from URLs match the same files read in-process, within 1e-4."""
    ok = [r for r in records if r["ok"]]
    ref = reference_probs(sorted({local_of[r["path"]] for r in ok}), weights)
    worst = max(
        abs(e["prob"] - float(ref[local_of[r["path"]]][e["index"]])) for r in ok for e in r["top_k"]
    )
    assert worst < 1e-4, f"max probability difference {worst:g}"


def test_s3_prefix_lists_like_a_folder_and_matches_local_files(
    clean_redis, start_worker, weights_file, tmp_path, s3, sample_dir
):
    photos = sample_dir
    names = sorted(p.name for p in photos.glob("*.jpg"))
    top, sub = names[:3], names[3:]
    s3.fill(
        "photos",
        {**{f"set/{n}": photos / n for n in top},
         **{f"set/sub/{n}": photos / n for n in sub},
         "set/notes.txt": b"not an image", "elsewhere/x.jpg": photos / names[0]},
    )  # fmt: skip
    aws = s3.env(tmp_path)
    start_worker(concurrency=2, **aws)
    env = {**cli_env(clean_redis, str(tmp_path / "state")), **aws}

    flat = tmp_path / "flat.jsonl"
    _run(["submit", "s3://photos/set/", "--out", str(flat), "--chunk-size", "2"], env)
    deep = tmp_path / "deep.jsonl"
    _run(["submit", "s3://photos/set/", "-r", "--out", str(deep), "--chunk-size", "2"], env)

    flat_records, deep_records = read_records(flat), read_records(deep)
    assert sorted(r["path"] for r in flat_records) == [f"s3://photos/set/{n}" for n in top]
    assert sorted(r["path"] for r in deep_records) == sorted(
        [f"s3://photos/set/{n}" for n in top] + [f"s3://photos/set/sub/{n}" for n in sub]
    )
    assert all(r["ok"] for r in deep_records), [r["error"] for r in deep_records]
    local_of = {r["path"]: str(photos / r["path"].rsplit("/", 1)[1]) for r in deep_records}
    _assert_parity(deep_records, local_of, weights_file)

    # A missing object and a missing bucket are FileNotFound; the object URL is kept as given.
    missing = tmp_path / "missing.jsonl"
    lst = write_list(tmp_path / "m.txt", ["s3://photos/set/nope.jpg", "s3://no-bucket/a.jpg"])
    _run(["submit", "--from-file", lst, "--out", str(missing)], env)
    errors = {r["path"]: r["error"]["type"] for r in read_records(missing)}
    assert errors == {
        "s3://photos/set/nope.jpg": ErrorType.FILE_NOT_FOUND,
        "s3://no-bucket/a.jpg": ErrorType.FILE_NOT_FOUND,
    }


def test_http_statuses_redirects_and_url_roots(
    clean_redis, start_worker, weights_file, tmp_path, sample_dir
):
    photos = sample_dir
    allowed_local = tmp_path / "local"
    allowed_local.mkdir()
    shutil.copy(photos / "coffee.jpg", allowed_local / "coffee.jpg")
    with HTTPSite(photos, latency=0.02) as site, HTTPSite(photos) as other:
        site.statuses |= {"/forbidden.jpg": 403, "/broken.jpg": 503}
        site.redirects |= {
            "/moved.jpg": "/rocket.jpg",  # stays inside the root
            "/away.jpg": other.url("rocket.jpg"),  # another origin, outside the roots
            "/local.jpg": f"file://{allowed_local}/coffee.jpg",
        }
        # Folders and URL prefixes mixed in one ':'-separated list, ports included.
        roots = f"{allowed_local}:{site.base}:s3://photos/set/"
        start_worker(concurrency=2, VISIONQ_ALLOWED_ROOTS=roots, VISIONQ_FETCH_RETRIES="1")
        want = {
            site.url("chelsea-cat.jpg"): None,
            site.url("moved.jpg"): None,
            str(allowed_local / "coffee.jpg"): None,
            site.url("missing.jpg"): ErrorType.FILE_NOT_FOUND,
            site.url("forbidden.jpg"): ErrorType.PERMISSION_DENIED,
            site.url("broken.jpg"): ErrorType.FETCH_FAILED,
            site.url("away.jpg"): ErrorType.PATH_NOT_ALLOWED,
            site.url("local.jpg"): ErrorType.PATH_NOT_ALLOWED,
            site.url("sub/../rocket.jpg"): ErrorType.INVALID_PATH,
            other.url("rocket.jpg"): ErrorType.PATH_NOT_ALLOWED,
            str(photos / "rocket.jpg"): ErrorType.PATH_NOT_ALLOWED,
            "s3://photos/other/a.jpg": ErrorType.PATH_NOT_ALLOWED,
            "file:///etc/hostname": ErrorType.UNSUPPORTED_SOURCE,
        }
        out = tmp_path / "r.jsonl"
        lst = write_list(tmp_path / "urls.txt", want)
        env = cli_env(clean_redis, str(tmp_path / "state"))
        _run(["submit", "--from-file", lst, "--out", str(out), "--chunk-size", "4"], env)
        assert other.requests == 0, "a redirect outside the roots was followed"

    records = read_records(out)
    got = {r["path"]: (r["error"] or {}).get("type") for r in records}
    wrong = {r["path"]: r["error"] for r in records if got[r["path"]] != want.get(r["path"])}
    assert got == want, wrong
    local_of = {
        site.url("chelsea-cat.jpg"): str(photos / "chelsea-cat.jpg"),
        site.url("moved.jpg"): str(photos / "rocket.jpg"),
        str(allowed_local / "coffee.jpg"): str(allowed_local / "coffee.jpg"),
    }
    _assert_parity(records, local_of, weights_file)


def test_endpoint_down_mid_job_fails_chunks_not_images(clean_redis, start_worker, tmp_path):
    corpus = tmp_path / "corpus"
    make_corpus(corpus, 40)
    worker = start_worker(concurrency=2)
    site = HTTPSite(corpus, latency=0.05).start()
    try:
        expected = [site.url(p.name) for p in sorted(corpus.glob("*.jpg"))]
        out = tmp_path / "r.jsonl"
        lst = write_list(tmp_path / "urls.txt", expected)
        env = cli_env(clean_redis, str(tmp_path / "state"))
        proc = visionq(["submit", "--from-file", lst, "--out", str(out), "--chunk-size", "4",
                        "--timeout", "240"], env)  # fmt: skip
        wait_until(lambda: line_count(out) >= 8, 120, "the first results")
        site.stop()
        down_at = time.monotonic()
        time.sleep(3.0)
        site.start()
        rc, _, err = finish(proc, 240)
        assert rc == 0, err
    finally:
        site.stop()
    records = read_records(out)
    assert_exactly_once("endpoint down mid-job", records, expected, time.monotonic() - down_at)
    failed = [r["error"] for r in records if not r["ok"]]
    assert failed == [], failed
    log = Path(worker.log_path).read_text()
    assert "is unreachable" in log, "no chunk saw the endpoint down; the test proved nothing"
