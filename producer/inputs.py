"""Where image paths come from: arguments, folders and path lists. All lazy."""

from __future__ import annotations

import io
import itertools
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

from producer import remote
from visionq.urls import is_url

log = logging.getLogger(__name__)
T = TypeVar("T")

# Entries of one folder sorted by name before the rest streams unsorted: bounds the
# memory a walk holds (a DirEntry is ~200 bytes) on folders of millions of files.
SORT_LIMIT = 32768

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".jpe"}
)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def walk(folder: str, *, recursive: bool) -> Iterator[str]:
    """Image files in ``folder`` in a stable order; subfolders if ``recursive``.

    The order is sorted by name within each folder (for folders of more than
    SORT_LIMIT entries, only the first SORT_LIMIT read), a folder's files before its
    subfolders.

    Each file is yielded once, however many ways lead to it (symlinks, hard links, a
    folder linked twice), and symlink loops end: see :class:`_Walk`.
    """
    return _Walk().walk(folder, recursive=recursive)


class _Walk:
    """One walk's memory of what it has seen, shared by all the folders of one job.

    Files are told apart by (st_dev, st_ino), but only the ones that can be reached
    twice are remembered: targets of symlinks and files with more than one hard link.
    A plain file (one link) inside a folder that is walked once can only be reached
    once more, through a symlink: a link whose target's folder is already walked is
    skipped, and a plain file whose (dev, ino) a link recorded earlier is skipped. So
    a tree of ordinary files costs one entry per folder, not per file.
    """

    def __init__(self) -> None:
        self.folders: set[tuple[int, int]] = set()
        self.files: set[tuple[int, int]] = set()

    def walk(self, folder: str, *, recursive: bool) -> Iterator[str]:
        # Iterative, not recursive: a deep tree must not hit Python's recursion limit.
        # Order: a folder's files (sorted), then each subfolder in turn (sorted).
        stack = [folder]
        while stack:
            current = stack.pop()
            subdirs: list[str] = []
            yield from self._scan(current, subdirs)
            if recursive:
                stack.extend(reversed(subdirs))

    def _scan(self, folder: str, subdirs: list[str]) -> Iterator[str]:
        try:
            st = os.stat(folder)
            if not self._first(self.folders, st):
                return  # reached again through a symlink or a loop
            scan = os.scandir(folder)
        except OSError as exc:
            log.warning("cannot read folder %s: %s", folder, exc)
            return
        with scan:
            try:
                # Sorted, so a job's order is stable; but a folder of millions of files
                # must not be held in memory, so past SORT_LIMIT entries the rest
                # streams in directory order (also stable while the folder is unchanged).
                head = sorted(itertools.islice(scan, SORT_LIMIT), key=lambda e: e.name)
                for entry in itertools.chain(head, scan):
                    try:
                        if entry.is_dir():  # follows symlinks: linked folders are walked
                            subdirs.append(entry.path)
                        elif is_image_name(entry.name) and self._new_file(entry):
                            yield entry.path
                    except OSError:
                        continue
            except OSError as exc:
                log.warning("cannot read all of folder %s: %s", folder, exc)
        subdirs.sort()

    def _new_file(self, entry: os.DirEntry[str]) -> bool:
        if entry.is_symlink():
            try:
                st = entry.stat()
                target = os.path.realpath(entry.path)
                home = os.stat(os.path.dirname(target))
            except OSError:
                return True  # a dangling link: passed on, so it gets an error result
            if (home.st_dev, home.st_ino) in self.folders and is_image_name(target):
                # Its own folder is (being) walked: the file comes from there.
                return False
            return self._first(self.files, st)
        st = entry.stat(follow_symlinks=False)
        if st.st_nlink > 1:
            return self._first(self.files, st)
        # One link only: a link seen earlier may have led here already.
        return (st.st_dev, st.st_ino) not in self.files

    @staticmethod
    def _first(seen: set[tuple[int, int]], st: os.stat_result) -> bool:
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return False
        seen.add(key)
        return True


def expand(paths: Iterable[str], *, recursive: bool = False) -> Iterator[str]:
    """Absolute paths and URLs; folders and prefixes expand to their image files.

    Anything that is not a folder passes through, even if missing, so that it gets an
    error result rather than vanishing from the job. Files found in folders are
    yielded once each, even when several folders (or links) lead to them.
    """
    seen = _Walk()
    for raw in paths:
        if raw.startswith("/") and is_image_name(raw) and _plain(raw):
            # The common line of a path list: an absolute image path, already normal.
            # Taken as a file without a stat, which costs more than the rest of the
            # producer's work per path on jobs of millions; a folder named like an
            # image is classified as a path (its error record says it is a folder).
            yield raw
            continue
        if is_url(raw):  # passed through as given; object-store prefixes are listed
            yield from remote.expand_url(raw, recursive=recursive)
            continue
        path = os.path.abspath(os.path.expanduser(raw))
        if os.path.isdir(path):
            yield from seen.walk(path, recursive=recursive)
        else:
            yield path


def _plain(path: str) -> bool:
    """True when ``os.path.abspath`` would return ``path`` unchanged."""
    return (
        "//" not in path
        and "/./" not in path
        and "/../" not in path
        and not (path.endswith(("/.", "/..", "/")))
    )


def open_list(name: str) -> TextIO:
    """A path list to hand to :func:`read_lines` (``-`` for stdin).

    Bytes that are not UTF-8 come through as surrogate escapes, as Python gives
    non-UTF-8 file names, so such names reach the workers intact.
    """
    if name == "-":
        return io.TextIOWrapper(
            sys.stdin.buffer, encoding="utf-8", errors="surrogateescape", newline="\n"
        )
    return open(name, encoding="utf-8", errors="surrogateescape", newline="\n")


def read_lines(fh: TextIO) -> Iterator[str]:
    """One path per line; blank lines skipped, surrounding newline stripped only."""
    for line in fh:
        line = line.rstrip("\r\n")
        if line.strip():
            yield line


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of ``size`` consecutive items (the last may be shorter), lazily."""
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
