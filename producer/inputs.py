"""Where image paths come from: arguments, folders and path lists. All lazy."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TextIO

from producer import remote
from visionq.urls import is_url

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".jpe"}
)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def walk(folder: str, *, recursive: bool) -> Iterator[str]:
    """Image files in ``folder`` in a stable (sorted) order; subfolders if ``recursive``."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    subdirs = []
    for entry in entries:
        try:
            if entry.is_dir():
                subdirs.append(entry.path)
            elif is_image_name(entry.name):
                yield entry.path
        except OSError:
            continue
    if recursive:
        for sub in subdirs:
            yield from walk(sub, recursive=True)


def expand(paths: Iterable[str], *, recursive: bool = False) -> Iterator[str]:
    """Absolute paths and URLs; folders and prefixes expand to their image files.

    Anything that is not a folder passes through, even if missing, so that it gets an
    error result rather than vanishing from the job.
    """
    for raw in paths:
        if is_url(raw):  # passed through as given; object-store prefixes are listed
            yield from remote.expand_url(raw, recursive=recursive)
            continue
        path = os.path.abspath(os.path.expanduser(raw))
        if os.path.isdir(path):
            yield from walk(path, recursive=recursive)
        else:
            yield path


def read_lines(fh: TextIO) -> Iterator[str]:
    """One path per line; blank lines skipped, surrounding newline stripped only."""
    for line in fh:
        line = line.rstrip("\r\n")
        if line.strip():
            yield line


def chunked(paths: Iterable[str], size: int) -> Iterator[list[str]]:
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    chunk: list[str] = []
    for path in paths:
        chunk.append(path)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
