"""Fetching URLs in a pool child: order, bounds, limits and failure classes.

The HTTP cases use a real server on loopback (tests/stores.py), in-process.
"""

from __future__ import annotations

import io
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.stores import HTTPSite
from visionq.schema import ErrorType
from visionq.settings import Settings
from workers.errors import ImageError, SystemicError
from workers.fetch import ByteBudget, FetchAhead, Ticket
from workers.paths import PathPolicy

pytest.importorskip("fsspec")
pytest.importorskip("urllib3")

from workers import sources


def test_results_come_in_order_whatever_finishes_first():
    def fetch(url: str, ticket: Ticket) -> bytes:
        time.sleep(0.05 if url.endswith("0") else 0.0)
        if url.endswith("2"):
            raise ImageError(ErrorType.FILE_NOT_FOUND, url)
        return url.encode()

    items = [(i * 2, f"u{i}") for i in range(5)]
    with ThreadPoolExecutor(4) as pool:
        out = list(FetchAhead(items, fetch, pool, window=8, budget_bytes=1 << 20))
    assert [i for i, _ in out] == [0, 2, 4, 6, 8]
    assert out[0][1] == b"u0" and isinstance(out[2][1], ImageError)


def test_bytes_in_flight_stay_within_budget_plus_the_awaited_image():
    used, peak, lock = [0], [0], threading.Lock()

    def fetch(url: str, ticket: Ticket) -> bytes:
        ticket.take(10)
        with lock:
            used[0] += 10
            peak[0] = max(peak[0], used[0])
        return b"x" * 10

    items = [(i, f"u{i}") for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        for _i, body in FetchAhead(items, fetch, pool, window=16, budget_bytes=25):
            time.sleep(0.005)  # a slow consumer: fetches run ahead until the budget stops them
            with lock:
                used[0] -= len(body)
    assert peak[0] <= 25 + 10, peak[0]


def _reader(site_root: Path, paths, **settings):
    s = Settings(fetch_retries=1, **settings)
    policy = PathPolicy(roots=s.roots, max_bytes=s.max_image_bytes)
    return sources.Reader(policy, s, paths)


def _outcome(reader, i):
    try:
        return len(reader.open(i).read())
    except ImageError as exc:
        return exc.etype


def test_size_and_pixel_limits_apply_before_the_body_is_whole(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (1200, 1200), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "big.png")  # 1.4 MB, 1.44 Mpx
    (tmp_path / "large.jpg").write_bytes(b"\xff" * 5000)
    (tmp_path / "ok.jpg").write_bytes((Path("samples") / "coffee.jpg").read_bytes())
    with HTTPSite(tmp_path) as site:
        site.unsized.add("/big.png")  # no Content-Length: only streaming can stop it
        paths = [site.url("big.png"), site.url("large.jpg"), site.url("ok.jpg")]
        # Were the whole body read first, the byte limit would be hit and say so instead.
        r = _reader(tmp_path, paths, max_image_pixels=1_000_000, max_image_bytes=500_000)
        assert _outcome(r, 0) == ErrorType.DECOMPRESSION_BOMB
        r = _reader(tmp_path, paths[1:], max_image_bytes=4000)
        assert _outcome(r, 0) == ErrorType.FILE_TOO_LARGE
        assert _outcome(r, 1) == ErrorType.FILE_TOO_LARGE  # the photo is 37 kB


def test_one_failing_object_is_its_own_error_but_a_dead_endpoint_fails_the_chunk(tmp_path):
    (tmp_path / "ok.jpg").write_bytes(b"fine")
    site = HTTPSite(tmp_path).start()
    site.statuses["/broken.jpg"] = 500
    paths = [site.url("ok.jpg"), site.url("broken.jpg"), site.url("ok.jpg")]
    r = _reader(tmp_path, paths)
    assert [_outcome(r, i) for i in range(3)] == [4, ErrorType.FETCH_FAILED, 4]
    site.stop()
    r = _reader(tmp_path, paths)
    with pytest.raises(SystemicError, match="unreachable"):
        r.open(0)


def test_a_worker_without_the_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # import s3fs now raises ImportError
    monkeypatch.setattr(sources, "_remote", None)
    r = _reader(Path("."), ["s3://photos/a.jpg"])
    with pytest.raises(ImageError) as err:
        r.open(0)
    assert err.value.etype == ErrorType.UNSUPPORTED_SOURCE
    assert 'pip install "visionq[s3]"' in err.value.message


def test_local_paths_still_go_through_the_path_policy(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"local")
    r = _reader(tmp_path, [str(tmp_path / "a.jpg")])
    assert r.open(0).read() == b"local"
    assert isinstance(r.open(0), io.BufferedReader)


def test_a_worker_without_the_http_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "urllib3", None)
    monkeypatch.setattr(sources, "_remote", None)
    r = _reader(Path("."), ["https://cdn.example.com/a.jpg"])
    with pytest.raises(ImageError) as err:
        r.open(0)
    assert err.value.etype == ErrorType.UNSUPPORTED_SOURCE
    assert 'pip install "visionq[http]"' in err.value.message


@pytest.mark.parametrize(
    ("url", "etype"),
    [
        ("file:///etc/hostname", ErrorType.UNSUPPORTED_SOURCE),
        ("memory://x/a.jpg", ErrorType.UNSUPPORTED_SOURCE),
        ("zip://a.jpg::s3://b/x.zip", ErrorType.UNSUPPORTED_SOURCE),
        ("s3://b/a.jpg::file:///etc/hostname", ErrorType.UNSUPPORTED_SOURCE),
        ("https://user:pw@cdn.example.com/a.jpg", ErrorType.INVALID_PATH),
        ("https://cdn.example.com/x/../a.jpg", ErrorType.INVALID_PATH),
    ],
)
def test_urls_refused_before_any_request(url, etype):
    source = sources.RemoteSource(PathPolicy(max_bytes=10), Settings())
    with pytest.raises(ImageError) as err:
        source.check(url)
    assert err.value.etype == etype


def test_a_server_that_never_answers_is_down_after_retries(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"late")
    with HTTPSite(tmp_path, latency=2.0) as site:
        r = _reader(tmp_path, [site.url("a.jpg")], fetch_timeout=0.2)
        start = time.monotonic()
        with pytest.raises(SystemicError, match="unreachable"):
            r.open(0)
        assert time.monotonic() - start < 1.9, "the timeout did not cut the request short"


def test_an_abandoned_chunk_releases_its_fetch_threads(tmp_path, monkeypatch):
    # A chunk that stops half way (time limit, failure) must not leave pool threads
    # waiting for budget forever: the child's next chunk closes it.
    monkeypatch.setattr(sources, "_pool", None)  # this child's pool: 2 threads
    for i in range(6):
        (tmp_path / f"{i}.jpg").write_bytes(b"x" * 1000)
    got: list[int] = []
    with HTTPSite(tmp_path) as site:
        paths = [site.url(f"{i}.jpg") for i in range(6)]
        small = {"fetch_ahead_bytes": 1500, "fetch_concurrency": 2}
        first = _reader(tmp_path, paths, **small)
        assert first.open(0).read() == b"x" * 1000  # then abandoned
        time.sleep(0.3)  # its fetches 1 and 2 now wait for bytes that never come back

        def second_chunk() -> None:
            second = _reader(tmp_path, paths, **small)
            got.extend(len(second.open(i).read()) for i in range(6))

        t = threading.Thread(target=second_chunk, daemon=True)
        t.start()
        t.join(10)
    assert got == [1000] * 6, "the next chunk found no free fetch thread"


def test_http_goes_through_the_proxy_the_environment_names(tmp_path, monkeypatch):
    (tmp_path / "a.jpg").write_bytes(b"direct")
    with HTTPSite(tmp_path) as origin, HTTPSite(tmp_path) as proxy:
        # A proxy is asked for the absolute URL; its answer tells who answered.
        proxy.statuses[origin.url("a.jpg")] = 403
        monkeypatch.setenv("HTTP_PROXY", proxy.base)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("http_proxy", raising=False)
        s = Settings(fetch_retries=0)
        remote = sources.RemoteSource(PathPolicy(max_bytes=s.max_image_bytes), s)
        with pytest.raises(ImageError) as err:
            remote.fetch(origin.url("a.jpg"), Ticket(ByteBudget(1 << 20), 0))
        assert err.value.etype == ErrorType.PERMISSION_DENIED
        assert (proxy.requests, origin.requests) == (1, 0)

        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        remote = sources.RemoteSource(PathPolicy(max_bytes=s.max_image_bytes), s)
        assert remote.fetch(origin.url("a.jpg"), Ticket(ByteBudget(1 << 20), 0)) == b"direct"
        assert (proxy.requests, origin.requests) == (1, 1)
