"""Fetch-ahead: URL bodies arrive while the decoder and the model work on earlier ones.

One pool child runs one :class:`FetchAhead` per chunk on a small, long-lived thread pool.
Two bounds keep it polite and small:

- concurrency: the pool's size (``VISIONQ_FETCH_CONCURRENCY``) and a window of at most
  twice that many items submitted ahead of the consumer;
- memory: a :class:`ByteBudget` (``VISIONQ_FETCH_AHEAD_BYTES``) that a fetch must take
  bytes from before it reads them. Only the item the consumer waits for may exceed it
  (it is never made to wait, so the pipeline cannot deadlock); the rest wait for the
  consumer to hand bytes back. A child therefore holds at most the budget plus one
  image (``VISIONQ_MAX_IMAGE_BYTES``) of fetched bodies.

Results come out in submission order, as ``(index, bytes)`` or ``(index, ImageError)``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from visionq.schema import ErrorType
from workers.errors import ImageError


class Cancelled(Exception):
    """The chunk that wanted this fetch is gone; stop reading."""


class ByteBudget:
    """Bytes of fetched bodies a chunk may hold, lent to fetches in submission order."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.head = 0  # sequence number the consumer waits for: it never waits for bytes
        self.closed = False
        self._cond = threading.Condition()

    def take(self, seq: int, n: int) -> None:
        with self._cond:
            while self.used + n > self.limit and seq != self.head and not self.closed:
                self._cond.wait(0.5)
            if self.closed:
                raise Cancelled()
            self.used += n

    def give(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()

    def advance(self, head: int) -> None:
        with self._cond:
            self.head = head
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class Ticket:
    """One fetch's share of the budget; a retry starts from nothing again."""

    def __init__(self, budget: ByteBudget, seq: int) -> None:
        self.budget = budget
        self.seq = seq
        self.held = 0

    def take(self, n: int) -> None:
        if n > 0:
            self.budget.take(self.seq, n)
            self.held += n

    def give_back(self) -> None:
        if self.held:
            self.budget.give(self.held)
            self.held = 0


Fetcher = Callable[[str, Ticket], bytes]


class FetchAhead:
    """Fetch ``items`` (index, url) with ``fetch`` on ``pool``; iterate results in order."""

    def __init__(
        self,
        items: Sequence[tuple[int, str]],
        fetch: Fetcher,
        pool: ThreadPoolExecutor,
        *,
        window: int,
        budget_bytes: int,
    ) -> None:
        self.items = list(items)
        self.fetch = fetch
        self.pool = pool
        self.window = max(1, window)
        self.budget = ByteBudget(budget_bytes)

    def _run(self, url: str, ticket: Ticket) -> bytes:
        try:
            return self.fetch(url, ticket)
        except BaseException:
            ticket.give_back()
            raise

    def __iter__(self) -> Iterator[tuple[int, bytes | ImageError]]:
        inflight: deque[tuple[int, Ticket, Future[bytes]]] = deque()
        nxt = 0
        try:
            for seq, (index, _url) in enumerate(self.items):
                while nxt < len(self.items) and nxt - seq < self.window:
                    ticket = Ticket(self.budget, nxt)
                    future = self.pool.submit(self._run, self.items[nxt][1], ticket)
                    inflight.append((self.items[nxt][0], ticket, future))
                    nxt += 1
                self.budget.advance(seq)
                got_index, ticket, future = inflight.popleft()
                assert got_index == index
                try:
                    result: bytes | ImageError = future.result()
                except ImageError as exc:
                    result = exc
                except Exception as exc:  # a fetch bug costs its image, not the chunk
                    result = ImageError(ErrorType.FETCH_FAILED, f"{type(exc).__name__}: {exc}")
                yield index, result
                # The consumer has decoded the body by the time it asks for the next one.
                ticket.give_back()
        finally:
            self.budget.close()
            for _i, _t, future in inflight:
                future.cancel()
