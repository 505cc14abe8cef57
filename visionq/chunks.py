"""The chunk entry: which paths chunk ``i`` of a job holds, and how to check it.

A chunk entry crosses three boundaries: the producer's local manifest, the task
message a worker receives, and the payload a worker returns. Its checksum is computed
one way, here, so the collector can prove that a payload answers exactly the paths of
the chunk it claims to be, whatever was lost or re-published in between.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def checksum(paths: Iterable[str]) -> str:
    """16 hex digits identifying an ordered list of paths.

    ``surrogatepass`` encodes every Python str, including the lone surrogates that
    stand for file-name bytes that are not UTF-8, so no name can break the sum.
    """
    # Names cannot hold NUL on POSIX, so joining on it keeps ("ab", "c") != ("a", "bc");
    # one join and one encode keep this cheap for chunks of thousands of paths.
    text = "\0".join(paths) + "\0"
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


class PathHash:
    """:func:`checksum` built one path at a time, for readers that stream records."""

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=8)

    def add(self, path: str) -> None:
        self._h.update(path.encode("utf-8", "surrogatepass") + b"\0")

    def hexdigest(self) -> str:
        return self._h.hexdigest()


@dataclass(frozen=True)
class ChunkEntry:
    """Chunk ``chunk`` of job ``job``: ``paths`` starting at job position ``start``."""

    job: str
    chunk: int
    start: int
    paths: tuple[str, ...]
    sum: str

    @classmethod
    def build(cls, job: str, chunk: int, start: int, paths: Sequence[str]) -> ChunkEntry:
        return cls(job, chunk, start, tuple(paths), checksum(paths))

    def task_args(self, top_k: int) -> tuple[str, int, list[str], int]:
        """Positional arguments of the ``visionq.classify`` task."""
        return (self.job, self.chunk, list(self.paths), top_k)

    def matches(self, paths: Sequence[str]) -> bool:
        """True when ``paths`` (say, a payload's) are exactly this chunk's, in order."""
        return len(paths) == len(self.paths) and checksum(paths) == self.sum
