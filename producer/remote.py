"""URL inputs on the producer side: pass objects through, list prefixes like folders.

A URL that ends in ``/`` (or names a bucket alone, ``s3://bucket``) on an object store
is a prefix: it expands to the image objects under it, sorted, one level deep unless
``recursive``. Every other URL passes through exactly as given, unchecked, so that a
missing object gets its error result rather than vanishing from the job. HTTP has no
listing: an http(s) URL always passes through.

fsspec and the store's backend are imported only when a prefix is listed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from producer.errors import InputError
from visionq import urls

_EXTRAS = {"s3": "s3", "s3a": "s3"}


def is_prefix(url: str) -> bool:
    """True for a URL to list rather than to read."""
    parts = urlsplit(url)
    if parts.scheme.lower() in ("http", "https"):
        return False
    return url.endswith("/") or parts.path in ("", "/")


def expand_url(url: str, *, recursive: bool) -> Iterator[str]:
    """``url`` itself, or the image objects under a prefix (see the module doc)."""
    if not is_prefix(url):
        yield url
        return
    yield from list_prefix(url, recursive=recursive)


def list_prefix(url: str, *, recursive: bool) -> Iterator[str]:
    """Image object URLs under a prefix, sorted, with the prefix's own scheme."""
    from producer.inputs import is_image_name

    scheme = urls.scheme(url) or ""
    fs = _filesystem(scheme)
    base = fs._strip_protocol(url).rstrip("/")
    try:
        if recursive:
            names = sorted(fs.find(base))
        else:
            names = sorted(
                e["name"] for e in fs.ls(base, detail=True) if e.get("type") != "directory"
            )
    except FileNotFoundError:
        return  # an empty or missing prefix lists nothing, as an empty folder does
    except PermissionError as exc:
        raise InputError(f"cannot list {url}: access denied ({exc})") from None
    except OSError as exc:
        raise InputError(f"cannot list {url}: {exc}") from None
    for name in names:
        if is_image_name(name):
            yield f"{scheme}://{name}"


def _filesystem(scheme: str) -> Any:
    try:
        import fsspec

        return fsspec.filesystem(scheme)
    except ImportError as exc:
        extra = _EXTRAS.get(scheme)
        hint = f'pip install "visionq[{extra}]"' if extra else f"install fsspec's {scheme} backend"
        raise InputError(f"cannot list {scheme}:// prefixes here ({exc}); {hint}") from None
    except ValueError as exc:
        raise InputError(f"no filesystem for {scheme}:// URLs: {exc}") from None
