"""How big the next chunk is, and how many chunks may be in flight.

Guided self-scheduling: each chunk takes a share of the work left, ``left / (2 x
children)``, so a big job starts with big chunks (per-task overhead vanishes) and ends
with small ones (the last chunk running while the other children idle is short). Three
bounds shape that share:

* at least one child batch, and a whole number of batches, so a GPU batch fills;
* at most ``chunk_seconds`` of work for one child, measured from the results that
  came back (a chunk must stay far inside the task time limit and the stall timer);
* at most ``MAX_CHUNK`` paths, which bounds the bytes one chunk holds in Redis.

The window is the number of chunks published and not yet collected: two per child
plus a spare, so every child has one running and one queued while the collector is
busy writing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_CHUNK = 8192
# Before any result has come back, assume a slow image (a large photo on one CPU
# core); the first results correct it within one chunk.
PRIOR_SECONDS_PER_IMAGE = 0.1
_EWMA = 0.3


@dataclass
class Fleet:
    """What the registry shows: pool children and their typical batch size."""

    children: int = 2
    batch: int = 8


class Sizer:
    """Chunk sizes and window for one job; feed it results with :meth:`observe`."""

    def __init__(self, *, fixed: int = 0, chunk_seconds: float = 20.0, window: int = 0) -> None:
        self.fixed = fixed
        self.chunk_seconds = chunk_seconds
        self.window_setting = window
        self.fleet = Fleet()
        self.seconds_per_image: float | None = None

    def observe(self, images: int, seconds: float) -> None:
        """One child took ``seconds`` for a chunk of ``images``."""
        if images <= 0 or seconds <= 0:
            return
        per = seconds / images
        old = self.seconds_per_image
        self.seconds_per_image = per if old is None else old + _EWMA * (per - old)

    def window(self) -> int:
        if self.window_setting:
            return self.window_setting
        return 2 * max(1, self.fleet.children) + 1

    def next_size(self, remaining: int) -> int:
        if remaining <= 0:
            return 0
        if self.fixed:
            return min(self.fixed, remaining)
        batch = max(1, self.fleet.batch)
        share = math.ceil(remaining / (2 * max(1, self.fleet.children)))
        per = self.seconds_per_image or PRIOR_SECONDS_PER_IMAGE
        by_time = int(self.chunk_seconds / per)
        size = min(share, by_time, MAX_CHUNK)
        size = max(batch, batch * math.ceil(size / batch))
        return min(size, remaining)
