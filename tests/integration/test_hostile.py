"""Hostile inputs: every path gets exactly one clean result and the worker stays up.

The job goes through the Python API, so paths the CLI would normalise away (relative,
NUL bytes) reach the worker as they are.
"""

from __future__ import annotations

import os
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from producer.client import Client
from tests.images import mixed_folder, photo
from tests.integration.harness import assert_exactly_once, make_corpus, read_records
from visionq.schema import ErrorType
from visionq.settings import Settings

pytestmark = pytest.mark.integration

E = ErrorType
MAX_BYTES = 1_000_000  # VISIONQ_MAX_IMAGE_BYTES for this worker


def png_bomb(path: Path, width: int, height: int) -> None:
    """A greyscale PNG of ``width x height`` zero pixels, written without ever holding
    the image: the file is a few hundred KB, the decoded image hundreds of MB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def build_matrix(root: Path) -> dict[str, str | None]:
    """Write the hostile files under ``root``; map each raw path -> expected error type."""
    expected: dict[str, str | None] = {}
    mixed = root / "mixed"
    for name, etype in mixed_folder(mixed).items():  # modes, CMYK, palette, animated, ...
        expected[str(mixed / name)] = etype
    h = root / "h"
    h.mkdir()
    good = make_corpus(h, 2, seed=3)
    expected.update(dict.fromkeys(good, None))

    def add(name: str, etype: str | None) -> Path:
        expected[str(h / name)] = etype
        return h / name

    add("missing.jpg", E.FILE_NOT_FOUND)
    add("folder.jpg", E.NOT_A_FILE).mkdir()
    os.mkfifo(add("fifo.jpg", E.NOT_A_FILE))
    expected["/dev/zero"] = E.NOT_A_FILE
    expected["/dev/null"] = E.NOT_A_FILE
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (700, 700, 3), dtype=np.uint8)
    Image.fromarray(noise).save(add("oversized.png", E.FILE_TOO_LARGE))
    png_bomb(add("bomb-20000x20000.png", E.DECOMPRESSION_BOMB), 20000, 20000)
    png_bomb(add("bomb-10000x10000.png", E.DECOMPRESSION_BOMB), 10000, 10000)  # 1x..2x
    Image.new("RGB", (6500, 100), "red").save(add("strip-65to1.png", E.UNSUPPORTED_IMAGE))
    Image.new("RGB", (3200, 50), "red").save(add("strip-64to1.png", None))
    Image.new("RGB", (1, 1), "blue").save(add("one-pixel.png", None))
    deep = np.linspace(0, 2**31 - 1, 128 * 128).reshape(128, 128).astype(np.int32)
    Image.fromarray(deep, "I").save(add("thirty-two-bit.tif", None))
    photo().save(add("png-named.jpg", None), "PNG")
    (h / "header-only.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16)
    expected[str(h / "header-only.png")] = E.UNREADABLE_IMAGE
    with open(add("garbage.gif", E.UNREADABLE_IMAGE), "wb") as fh:
        # A sane 64x64 screen descriptor, then noise: random size bytes could also
        # (rightly) make it a decompression bomb.
        noise = random.Random(7).randbytes(4096)
        fh.write(b"GIF89a" + (64).to_bytes(2, "little") * 2 + noise)
    # Path tricks.
    (h / "sub").mkdir()
    expected[f"{h}/sub/../{Path(good[0]).name}"] = None
    expected[f"{h}/no-such-dir/../{Path(good[1]).name}"] = None
    expected[f"{h}/a\x00b.jpg"] = E.INVALID_PATH
    expected["relative/cat.jpg"] = E.INVALID_PATH
    expected[""] = E.INVALID_PATH
    os.symlink(good[0], add("link-good.jpg", None))
    os.symlink(h / "gone.jpg", add("link-dangling.jpg", E.FILE_NOT_FOUND))
    os.symlink(h / "loop-b.jpg", add("loop-a.jpg", E.NOT_A_FILE))
    os.symlink(h / "loop-a.jpg", add("loop-b.jpg", E.NOT_A_FILE))
    os.symlink("/dev/zero", add("link-zero.jpg", E.NOT_A_FILE))
    os.symlink(h / "folder.jpg", add("link-folder.jpg", E.NOT_A_FILE))
    return expected


def test_hostile_input_matrix(clean_redis, start_worker, tmp_path):
    expected = build_matrix(tmp_path)
    worker = start_worker(concurrency=2, VISIONQ_MAX_IMAGE_BYTES=str(MAX_BYTES))
    settings = Settings(
        broker_url=clean_redis.broker_url,
        result_backend=clean_redis.backend_url,
        state_dir=str(tmp_path / "state"),
    )
    out = tmp_path / "r.jsonl"
    with Client(settings=settings) as client:
        job = client.submit(list(expected), chunk_size=8)
        summary = job.collect(str(out), timeout=150)
    records = read_records(out)
    assert_exactly_once("hostile inputs", records, expected)
    wrong = {
        r["path"]: (r["error"], expected[r["path"]])
        for r in records
        if (r["error"] or {}).get("type") != expected[r["path"]]
    }
    assert not wrong, wrong
    for r in records:
        assert r["ok"] == (r["error"] is None)
        assert r["ok"] or (r["error"]["message"] and r["top_k"] == [])
    print(f"FIGURE hostile inputs: {len(records)} paths, errors {dict(summary.errors)}")

    # The worker is still up with both children, none of them died on the way.
    log = worker.log_text()
    assert worker.proc.poll() is None
    assert "exited with" not in log and "WorkerLostError" not in log, log[-3000:]
    with Client(settings=settings) as client:
        again = list(client.submit(make_corpus(tmp_path / "after", 4, seed=9)).results(60))
    assert len(again) == 4 and all(r["ok"] for r in again)
