from __future__ import annotations

import io
import itertools
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


# -- each file once, by device and inode -------------------------------------------------


def _tree(root):
    """root/{a.jpg, sub/b.jpg}: two files."""
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(b"x")
    (root / "sub" / "b.jpg").write_bytes(b"x")


def test_two_symlink_loops_leave_two_files_two_paths(tmp_path):
    root = tmp_path / "root"
    _tree(root)
    os.symlink("..", root / "sub" / "up")  # sub/up -> root
    os.symlink(".", root / "self")  # root/self -> root
    os.symlink(str(root / "sub"), root / "sub" / "again")  # sub/again -> sub
    # islice: a walk that loops fails here instead of running on
    paths = list(itertools.islice(expand([str(root)], recursive=True), 100))
    assert paths == [str(root / "a.jpg"), str(root / "sub" / "b.jpg")]


def test_mutual_loops_between_folders_end(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "1.png").write_bytes(b"x")
    (b / "2.png").write_bytes(b"x")
    os.symlink(str(b), a / "to-b")
    os.symlink(str(a), b / "to-a")
    paths = list(itertools.islice(expand([str(a), str(b)], recursive=True), 100))
    assert sorted(os.path.basename(p) for p in paths) == ["1.png", "2.png"]


def test_symlinked_folder_reached_twice_is_walked_once(tmp_path):
    root = tmp_path / "root"
    _tree(root)
    os.symlink(str(root / "sub"), root / "z-link")
    paths = list(expand([str(root)], recursive=True))
    assert paths == [str(root / "a.jpg"), str(root / "sub" / "b.jpg")]
    # the same folder given twice, or inside another one given: still once
    again = list(expand([str(root), str(root / "sub"), str(root / "z-link")], recursive=True))
    assert again == paths


def test_symlinked_folder_is_followed(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "c.jpg").write_bytes(b"x")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(str(real), root / "linked")
    assert list(expand([str(root)], recursive=True)) == [str(root / "linked" / "c.jpg")]


def test_hard_links_and_file_symlinks_count_once(tmp_path):
    root = tmp_path / "root"
    _tree(root)
    os.link(root / "a.jpg", root / "sub" / "a-hard.jpg")
    os.symlink(str(root / "sub" / "b.jpg"), root / "b-soft.jpg")
    os.symlink(str(root / "missing.jpg"), root / "dangling.jpg")
    paths = list(expand([str(root)], recursive=True))
    # the dangling link passes through: it gets an error result, not silence
    assert paths == [str(root / "a.jpg"), str(root / "b-soft.jpg"),
                     str(root / "dangling.jpg")]  # fmt: skip


def test_plain_files_are_not_remembered(tmp_path):
    from producer.inputs import _Walk

    root = tmp_path / "root"
    _tree(root)
    for i in range(50):
        (root / "sub" / f"{i}.jpg").write_bytes(b"x")
    os.link(root / "a.jpg", root / "a2.jpg")
    walk = _Walk()
    assert len(list(walk.walk(str(root), recursive=True))) == 52
    assert len(walk.folders) == 2 and len(walk.files) == 1  # only the hard-linked one


def test_deep_tree_does_not_recurse(tmp_path):
    import sys

    node = top = tmp_path / "deep"
    for _ in range(300):
        node = node / "d"
    node.mkdir(parents=True)
    (node / "leaf.jpg").write_bytes(b"x")
    limit = sys.getrecursionlimit()
    # A walk that recursed once per level would need 300+ frames; pytest's own
    # clean-up needs the normal limit back before it removes the tree.
    sys.setrecursionlimit(150)
    try:
        found = list(expand([str(top)], recursive=True))
    finally:
        sys.setrecursionlimit(limit)
    assert found == [str(node / "leaf.jpg")]


# -- names that are not UTF-8 ---------------------------------------------------------------


def test_non_utf8_names_flow_through_walk_and_lists(tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9-\xff.jpg"
    with open(raw, "wb") as fh:
        fh.write(b"x")
    (paths,) = list(expand([str(tmp_path)]))
    assert os.fsencode(paths) == raw
    listing = tmp_path / "list.txt"
    listing.write_bytes(raw + b"\n" + raw + b".png\r\n")
    from producer.inputs import open_list

    with open_list(str(listing)) as fh:
        listed = list(expand(read_lines(fh)))
    assert [os.fsencode(p) for p in listed] == [raw, raw + b".png"]


@pytest.mark.parametrize("link_name", ["0-first.jpg", "z-last.jpg"])
def test_file_symlink_before_or_after_its_target_counts_once(tmp_path, link_name):
    root = tmp_path / "root"
    (root / "m-sub").mkdir(parents=True)
    (root / "m-sub" / "t.jpg").write_bytes(b"x")
    (root / "here.jpg").write_bytes(b"x")
    os.symlink(str(root / "m-sub" / "t.jpg"), root / link_name)  # target walked later
    os.symlink(str(root / "here.jpg"), root / "m-sub" / link_name)  # target walked earlier
    paths = list(expand([str(root)], recursive=True))
    assert len(paths) == 2, paths
    assert len({os.path.realpath(p) for p in paths}) == 2


def test_huge_folder_streams_past_the_sort_limit(tmp_path, monkeypatch):
    import producer.inputs

    monkeypatch.setattr(producer.inputs, "SORT_LIMIT", 4)
    names = [f"{i:02d}.jpg" for i in range(11)]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "z-sub").mkdir()
    (tmp_path / "z-sub" / "deep.jpg").write_bytes(b"x")
    paths = list(expand([str(tmp_path)], recursive=True))
    assert sorted(paths[:-1]) == [str(tmp_path / n) for n in names]
    assert paths[-1] == str(tmp_path / "z-sub" / "deep.jpg")
