"""URL inputs and URL roots: the syntax both sides agree on. Torch-free, network-free.

An input is a URL when it starts with ``scheme://``; anything else is a local path.
``VISIONQ_ALLOWED_ROOTS`` mixes folders and URL prefixes; :func:`split_roots` parses it
and :func:`within_roots` decides containment for a URL.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# One URL entry of a ':'-separated list: scheme://host[:port] then a path without ':'.
# The host may be an IPv6 literal in brackets.
_URL_ENTRY = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://(?:\[[^\]]*\]|[^/:\[]*)(?::[0-9]*)?[^:]*")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def scheme(raw: str) -> str | None:
    """The lower-cased scheme of a URL input, or None for a local path."""
    m = _SCHEME.match(raw)
    return m.group(1).lower() if m else None


def is_url(raw: object) -> bool:
    return isinstance(raw, str) and _SCHEME.match(raw) is not None


def split_roots(value: str, sep: str = os.pathsep) -> tuple[str, ...]:
    """Entries of ``VISIONQ_ALLOWED_ROOTS``: folders and URL prefixes.

    Entries are separated by ``os.pathsep`` as before. Where that is ``:`` (POSIX), a
    URL entry keeps its own ``://`` and ``:port``; it ends at the next ``:``, so a URL
    root cannot contain ``:`` in its path. ``/data/a:s3://b/p/:https://h:8443/i/``
    gives ``/data/a``, ``s3://b/p/`` and ``https://h:8443/i/``.
    """
    if sep != ":":
        return tuple(p for p in value.split(sep) if p)
    out: list[str] = []
    pos = 0
    while pos < len(value):
        m = _URL_ENTRY.match(value, pos)
        if m is None:
            end = value.find(":", pos)
            end = len(value) if end < 0 else end
        else:
            end = m.end()
        if end > pos:
            out.append(value[pos:end])
        pos = end + 1
    return tuple(out)


def _key(url: str) -> tuple[str, str, str] | None:
    """(scheme, authority, decoded path) compared for containment, or None if unsafe.

    Scheme and host compare case-insensitively, default ports are dropped, query and
    fragment are ignored (a signed URL's query changes per request). A path with a
    ``.`` or ``..`` segment, before or after percent-decoding, is refused: a server
    would normalise it to somewhere else.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.username is not None or parts.password is not None:
        return None  # user@host tricks; credentials never belong in an input URL
    host = (parts.hostname or "").lower()
    sch = parts.scheme.lower()
    if port is not None and port != _DEFAULT_PORTS.get(sch):
        host = f"{host}:{port}"
    path = unquote(parts.path)
    if any(seg in (".", "..") for seg in path.split("/")) or "\\" in path or "\x00" in path:
        return None
    return sch, host, path


def within_roots(url: str, roots: Sequence[str]) -> bool:
    """True if ``url`` lies under one of the URL ``roots`` (same scheme and host)."""
    key = _key(url)
    if key is None:
        return False
    for root in roots:
        rkey = _key(root)
        if rkey is None or rkey[:2] != key[:2]:
            continue
        base = rkey[2].rstrip("/")
        if key[2] == base or key[2].startswith(base + "/") or not base:
            return True
    return False


def is_safe(url: str) -> bool:
    """False for URLs no root could ever contain (dot segments, credentials, bad port)."""
    return _key(url) is not None
