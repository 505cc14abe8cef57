from __future__ import annotations

import io
import os

import pytest

from producer.inputs import chunked, expand, read_lines


def test_folder_expands_to_images_sorted_and_absolute(tmp_path, monkeypatch):
    (tmp_path / "b.JPG").write_bytes(b"x")
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "c.jpeg").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    flat = list(expand(["."]))
    assert flat == [str(tmp_path / "a.png"), str(tmp_path / "b.JPG")]
    deep = list(expand(["."], recursive=True))
    assert deep == [*flat, str(sub / "c.jpeg")]


def test_missing_and_relative_paths_pass_through_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert list(expand(["nope.jpg"])) == [os.path.join(str(tmp_path), "nope.jpg")]


def test_read_lines_keeps_spaces_and_skips_blanks():
    fh = io.StringIO("/a b.jpg\n\n  \n/c.jpg\r\n/d.jpg")
    assert list(read_lines(fh)) == ["/a b.jpg", "/c.jpg", "/d.jpg"]


def test_chunked_is_lazy_and_exact():
    def gen():
        yield from (str(i) for i in range(10))

    chunks = list(chunked(gen(), 4))
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert [p for c in chunks for p in c] == [str(i) for i in range(10)]
    with pytest.raises(ValueError):
        list(chunked([], 0))


def test_chunked_does_not_consume_ahead():
    seen = []

    def gen():
        for i in range(100):
            seen.append(i)
            yield str(i)

    it = chunked(gen(), 10)
    next(it)
    assert len(seen) == 10
