from __future__ import annotations

import os

import pytest

from visionq.schema import ErrorType
from workers.errors import ImageError
from workers.paths import PathPolicy, rewrite


def _etype(policy: PathPolicy, path: object) -> str | None:
    try:
        policy.open(path).close()
    except ImageError as exc:
        return exc.etype
    return None


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok.jpg").write_bytes(b"\xff\xd8 data")
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"secret")
    os.symlink(outside, root / "link.jpg")
    os.mkfifo(tmp_path / "fifo.jpg")
    os.mkfifo(root / "pipe.jpg")
    (root / "dir.jpg").mkdir()
    return tmp_path, root


def test_allowed_roots_after_realpath(tree):
    tmp, root = tree
    policy = PathPolicy(roots=[str(root)], max_bytes=1000)
    assert _etype(policy, str(root / "ok.jpg")) is None
    assert _etype(policy, str(tmp / "secret.jpg")) == ErrorType.PATH_NOT_ALLOWED
    assert _etype(policy, str(root / ".." / "secret.jpg")) == ErrorType.PATH_NOT_ALLOWED
    assert _etype(policy, str(root / "link.jpg")) == ErrorType.PATH_NOT_ALLOWED
    # A FIFO outside the roots is refused before it is opened (opening would block).
    assert _etype(policy, str(tmp / "fifo.jpg")) == ErrorType.PATH_NOT_ALLOWED
    # A sibling folder sharing the prefix is not inside the root.
    (tmp / "root2").mkdir()
    (tmp / "root2" / "x.jpg").write_bytes(b"x")
    assert _etype(policy, str(tmp / "root2" / "x.jpg")) == ErrorType.PATH_NOT_ALLOWED


def test_special_files_and_bad_paths(tree):
    _, root = tree
    policy = PathPolicy(max_bytes=5)
    assert _etype(policy, str(root / "pipe.jpg")) == ErrorType.NOT_A_FILE
    assert _etype(policy, str(root / "dir.jpg")) == ErrorType.NOT_A_FILE
    assert _etype(policy, "/dev/zero") == ErrorType.NOT_A_FILE
    assert _etype(policy, str(root / "missing.jpg")) == ErrorType.FILE_NOT_FOUND
    assert _etype(policy, str(root / "ok.jpg") + "/x") == ErrorType.FILE_NOT_FOUND
    assert _etype(policy, "/tmp/a\x00b.jpg") == ErrorType.INVALID_PATH
    assert _etype(policy, "relative.jpg") == ErrorType.INVALID_PATH
    assert _etype(policy, None) == ErrorType.INVALID_PATH
    assert _etype(policy, str(root / "ok.jpg")) == ErrorType.FILE_TOO_LARGE
    (root / "empty.jpg").write_bytes(b"")
    assert _etype(PathPolicy(max_bytes=100), str(root / "empty.jpg")) == ErrorType.UNREADABLE_IMAGE


def test_path_map_rewrites_prefix_on_boundaries():
    rules = [("/mnt/photos", "/data"), ("/mnt", "/srv")]
    assert rewrite("/mnt/photos/a.jpg", rules) == "/data/a.jpg"
    assert rewrite("/mnt/photosets/a.jpg", rules) == "/srv/photosets/a.jpg"
    assert rewrite("/other/a.jpg", rules) == "/other/a.jpg"


def test_path_map_applies_before_roots(tree):
    _, root = tree
    policy = PathPolicy(roots=[str(root)], rewrites=[("/elsewhere", str(root))], max_bytes=1000)
    assert _etype(policy, "/elsewhere/ok.jpg") is None
