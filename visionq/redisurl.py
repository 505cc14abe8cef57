"""Redis URLs spelled for each client that reads them.

A Redis reached over a unix socket has three spellings: kombu (the broker) and
Celery's result backend both take ``redis+socket://:PASSWORD@/path/to.sock?virtual_host=N``
(the ``redis+`` prefix picks the Redis transport and backend; the ``socket`` scheme
behind it makes them use ``UnixDomainSocketConnection``), while redis-py's own
``from_url`` only knows ``unix://:PASSWORD@/path/to.sock?db=N``. visionq settings
always hold the first spelling; :func:`redis_py_url` converts it where redis-py
reads it directly (the producer's client, ``visionq status``, tests).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SOCKET_SCHEME = "redis+socket"


def socket_url(path: str, password: str | None, db: int = 0) -> str:
    """The broker/backend URL of a Redis listening on the unix socket ``path``."""
    auth = f":{password}@" if password else ""
    return f"{SOCKET_SCHEME}://{auth}{path}?virtual_host={db}"


def is_socket(url: str) -> bool:
    return url.startswith(SOCKET_SCHEME + "://")


def socket_with_db(url: str, db: int) -> str:
    """The same socket URL naming database ``db`` instead."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "virtual_host"]
    query.append(("virtual_host", str(db)))
    return urlunsplit(parts._replace(query=urlencode(query)))


def redis_py_url(url: str) -> str:
    """``url`` as redis-py's ``Redis.from_url`` understands it (socket URLs become
    ``unix://``; every other URL is returned unchanged)."""
    if not is_socket(url):
        return url
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    db = next((v for k, v in query if k == "virtual_host"), "0")
    rest = [(k, v) for k, v in query if k != "virtual_host"] + [("db", db)]
    return urlunsplit(parts._replace(scheme="unix", query=urlencode(rest)))
