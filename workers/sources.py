"""Open what a task names: a local file through ``PathPolicy``, or a URL.

URLs are fetched ahead of the decoder by :mod:`workers.fetch`: ``http(s)://`` through
urllib3's keep-alive pools, ``s3://`` and other schemes through fsspec and the scheme's
package. Every URL is checked before any request: the scheme must be one that reaches a
remote store (never ``file://``, an in-memory or a chained ``a::b`` filesystem), and with
``VISIONQ_ALLOWED_ROOTS`` set it must lie under one of its URL prefixes. HTTP redirects
are followed here, hop by hop, and each hop is held to the same rules, so a redirect can
never leave the roots or http(s). Size and pixel limits apply while the body streams in,
before it is whole.

urllib3, fsspec and fsspec's backends are imported only here, in pool children, on the
first URL: the Celery parent never loads them, and a worker without the extra installed
answers each URL with an ``UnsupportedSource`` error naming the extra to install.
"""

from __future__ import annotations

import io
import logging
import random
import threading
import time
import warnings
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit

from visionq import urls
from visionq.schema import ErrorType
from visionq.settings import Settings
from workers.errors import ImageError, SourceUnavailable, SystemicError
from workers.fetch import FetchAhead, Ticket
from workers.paths import PathPolicy

log = logging.getLogger(__name__)

HTTP = frozenset({"http", "https"})
# Schemes that read local or in-process data, or wrap another filesystem: through them
# a URL could reach files that PathPolicy guards.
REFUSED = frozenset(
    {"file", "local", "memory", "zip", "tar", "libarchive", "reference", "dir", "data",
     "simplecache", "filecache", "blockcache", "cached", "jlab", "jupyter", "github", "git"}
)  # fmt: skip
EXTRA = {"s3": "s3", "s3a": "s3", "http": "http", "https": "http"}
MAX_REDIRECTS = 5
BLOCK = 256 * 1024
PEEK = 64 * 1024  # enough of a file for Pillow to read its header and dimensions
_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")


class _Transient(Exception):
    """Worth retrying: a timeout, a 5xx, a refused or dropped connection.

    ``answered``: the endpoint sent a status (a 5xx); otherwise it sent nothing.
    """

    def __init__(self, message: str, *, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered


class RemoteSource:
    """Fetches URL bodies for one pool child, with retries and limits."""

    def __init__(self, policy: PathPolicy, settings: Settings) -> None:
        self.policy = policy
        self.max_bytes = policy.max_bytes
        self.max_pixels = settings.max_image_pixels
        self.timeout = settings.fetch_timeout
        self.retries = max(0, settings.fetch_retries)
        self.pool_size = max(1, settings.fetch_concurrency)
        self._fs: dict[str, Any] = {}
        self._http_client: _HTTPClient | None = None
        self._last_answer: dict[str, float] = {}  # endpoint -> when it last answered
        self._lock = threading.Lock()

    # -- checks ---------------------------------------------------------------------

    def check(self, url: str) -> str:
        """The URL's scheme if this worker may fetch it, else ImageError. No I/O."""
        scheme = urls.scheme(url) or ""
        parts = urlsplit(url)
        # fsspec chains filesystems with '::'; an IPv6 host ([::1]) is not a chain.
        chained = "::" in parts.path or ("::" in parts.netloc and "[" not in parts.netloc)
        if chained or scheme in REFUSED:
            raise ImageError(
                ErrorType.UNSUPPORTED_SOURCE,
                f"{url}: {scheme}:// inputs are not read by workers; give a path or a remote URL",
            )
        if not urls.is_safe(url):
            raise ImageError(ErrorType.INVALID_PATH, f"{url}: dot segments or credentials in a URL")
        if self.policy.restricted and not urls.within_roots(url, self.policy.url_roots):
            raise ImageError(ErrorType.PATH_NOT_ALLOWED, f"{url} is outside VISIONQ_ALLOWED_ROOTS")
        return scheme

    @staticmethod
    def endpoint(url: str) -> str:
        """What fails together: one HTTP origin, or one object store (all its buckets)."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        return f"{scheme}://{parts.netloc.lower()}" if scheme in HTTP else f"{scheme}://"

    # -- fetching -------------------------------------------------------------------

    def fetch(self, url: str, ticket: Ticket) -> bytes:
        """The whole body of ``url``, or ImageError; retries transient failures."""
        scheme = self.check(url)
        ep = self.endpoint(url)
        last: _Transient | None = None
        first_failure = 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                ticket.give_back()
                # Exponential backoff with jitter, so a fleet does not retry in step.
                time.sleep(min(4.0, 0.25 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5))
            try:
                body = (
                    self._http(url, ticket) if scheme in HTTP else self._other(scheme, url, ticket)
                )
            except Exception as exc:
                err = _classify(url, exc)
                if isinstance(err, ImageError) or err.answered:
                    self._answered(ep)
                if isinstance(err, ImageError):
                    raise err from None
                last = err
                first_failure = first_failure or time.monotonic()
                log.info("fetching %s failed (attempt %d): %s", url, attempt + 1, err)
                continue
            self._answered(ep)
            return body
        assert last is not None
        with self._lock:
            down = not last.answered and self._last_answer.get(ep, 0.0) < first_failure
        raise SourceUnavailable(
            ErrorType.FETCH_FAILED,
            f"{url}: {last} (after {self.retries + 1} attempts)",
            endpoint=ep,
            endpoint_down=down,
        )

    def _answered(self, ep: str) -> None:
        with self._lock:
            self._last_answer[ep] = time.monotonic()

    def _http(self, url: str, ticket: Ticket) -> bytes:
        client = self.http_client()  # first: a missing extra is UnsupportedSource
        target = url
        for _hop in range(MAX_REDIRECTS + 1):
            # Redirects come back to us so every hop is checked.
            r = client.get(target)
            whole = False
            try:
                if r.status in (301, 302, 303, 307, 308):
                    target = self._redirect(url, target, r.headers.get("Location"))
                    continue
                if r.status >= 400:
                    raise _HTTPStatus(r.status)
                length = r.headers.get("Content-Length")
                size = int(length) if length and length.isdigit() else None
                body = self._read(url, r, size, ticket)
                whole = True
                return body
            finally:
                if not whole:
                    r.close()  # a body cut short (a limit, an error) drops its connection
                r.release_conn()  # one read to its end is kept alive for the next fetch
        raise ImageError(ErrorType.FETCH_FAILED, f"{url}: more than {MAX_REDIRECTS} redirects")

    def _redirect(self, url: str, current: str, location: str | None) -> str:
        if not location:
            raise ImageError(ErrorType.FETCH_FAILED, f"{url}: redirect without a Location")
        target = urljoin(current, location)
        if (urls.scheme(target) or "") not in HTTP:
            raise ImageError(
                ErrorType.PATH_NOT_ALLOWED, f"{url} redirects to {target}, which is not http(s)"
            )
        if not urls.is_safe(target) or (
            self.policy.restricted and not urls.within_roots(target, self.policy.url_roots)
        ):
            raise ImageError(
                ErrorType.PATH_NOT_ALLOWED,
                f"{url} redirects to {target}, outside VISIONQ_ALLOWED_ROOTS",
            )
        return target

    def _other(self, scheme: str, url: str, ticket: Ticket) -> bytes:
        fs = self.filesystem(scheme)
        # cache_type "none": each read is exactly one ranged GET, nothing read ahead.
        with fs.open(url, "rb", cache_type="none") as f:
            return self._read(url, f, getattr(f, "size", None), ticket)

    def _read(self, url: str, f: Any, size: int | None, ticket: Ticket) -> bytes:
        """Read ``f`` to the end, refusing too many bytes or pixels as early as known."""
        if size is not None:
            self._check_size(url, size)
            if size == 0:
                raise ImageError(ErrorType.UNREADABLE_IMAGE, f"{url} is empty")
        buf = bytearray()
        peeked = False
        while size is None or len(buf) < size:
            if size is None:
                want = BLOCK if peeked else PEEK
            elif peeked or size <= 4 * BLOCK:
                want = size - len(buf)  # the rest in one ranged read
            else:
                want = PEEK - len(buf)  # the header first, so a bomb costs 64 KiB
            # Bytes are taken from the chunk's budget before they are read.
            ticket.take(len(buf) + want - ticket.held)
            block = f.read(want)
            if not block:
                break
            buf += block
            self._check_size(url, len(buf))
            if not peeked and (len(buf) >= PEEK or len(buf) == size):
                peeked = True
                self._check_pixels(url, bytes(buf[:PEEK]))
        if not buf:
            raise ImageError(ErrorType.UNREADABLE_IMAGE, f"{url} is empty")
        return bytes(buf)

    def _check_size(self, url: str, n: int) -> None:
        if n > self.max_bytes:
            raise ImageError(
                ErrorType.FILE_TOO_LARGE,
                f"{url} is over {self.max_bytes} bytes (VISIONQ_MAX_IMAGE_BYTES)",
            )

    def _check_pixels(self, url: str, head: bytes) -> None:
        # The header states the dimensions; a bomb is refused before its body arrives.
        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(io.BytesIO(head), formats=_FORMATS) as img:
                    w, h = img.size
        except Exception:
            return  # header not in the first bytes, or not an image: decoding will say
        if w * h > self.max_pixels:
            raise ImageError(
                ErrorType.DECOMPRESSION_BOMB,
                f"{url} is {w}x{h} = {w * h} pixels; the limit is {self.max_pixels} "
                "(VISIONQ_MAX_IMAGE_PIXELS)",
            )

    # -- filesystems ----------------------------------------------------------------

    def http_client(self) -> _HTTPClient:
        with self._lock:
            if self._http_client is None:
                try:
                    self._http_client = _HTTPClient(self.timeout, self.pool_size)
                except ImportError as exc:
                    raise _missing_package("http", exc) from None
            return self._http_client

    def filesystem(self, scheme: str) -> Any:
        with self._lock:
            if scheme not in self._fs:
                self._fs[scheme] = self._make(scheme)
            return self._fs[scheme]

    def _make(self, scheme: str) -> Any:
        try:
            import fsspec

            if scheme in ("s3", "s3a"):
                # Credentials, region and AWS_ENDPOINT_URL come from the standard AWS
                # variables and files. Retries are ours (VISIONQ_FETCH_RETRIES), not
                # botocore's and s3fs's on top of them.
                fs = fsspec.filesystem(
                    "s3",
                    config_kwargs={
                        "connect_timeout": self.timeout,
                        "read_timeout": self.timeout,
                        "retries": {"max_attempts": 1, "mode": "standard"},
                    },
                    skip_instance_cache=True,
                )
                fs.retries = 1
                return fs
            return fsspec.filesystem(scheme)
        except ImportError as exc:
            raise _missing_package(scheme, exc) from None
        except ValueError as exc:
            raise ImageError(
                ErrorType.UNSUPPORTED_SOURCE, f"no filesystem for {scheme}:// URLs: {exc}"
            ) from None


def _missing_package(scheme: str, exc: ImportError) -> ImageError:
    """The per-image answer of a worker that lacks what ``scheme`` needs."""
    extra = EXTRA.get(scheme)
    hint = f'pip install "visionq[{extra}]"' if extra else f"install fsspec's {scheme} backend"
    return ImageError(
        ErrorType.UNSUPPORTED_SOURCE,
        f"this worker cannot read {scheme}:// URLs ({exc}); {hint} on the worker",
    )


class _HTTPStatus(Exception):
    """An HTTP answer that is not a body or a redirect; ``_classify`` reads ``status``."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class _HTTPClient:
    """Keep-alive connection pools for http(s) fetches, direct or through the proxy that
    HTTP_PROXY / HTTPS_PROXY name (NO_PROXY honoured), as every HTTP client does.

    urllib3 and plain threads: a fetch costs about a quarter of the CPU of fsspec's
    HTTP filesystem (aiohttp driven from threads through an event loop), and a pool
    child spends that CPU on every image.
    """

    def __init__(self, timeout: float, pool_size: int) -> None:
        import urllib.request

        import urllib3

        self._urllib3 = urllib3
        self._kw: dict[str, Any] = {
            "maxsize": pool_size,
            "retries": False,  # retries are ours (VISIONQ_FETCH_RETRIES)
            "timeout": urllib3.Timeout(connect=timeout, read=timeout),
        }
        self._direct = urllib3.PoolManager(**self._kw)
        self._proxies = urllib.request.getproxies_environment()
        self._bypass = urllib.request.proxy_bypass_environment
        self._via: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _manager(self, url: str) -> Any:
        parts = urlsplit(url)
        proxy = self._proxies.get(parts.scheme.lower())
        if not proxy or self._bypass(parts.netloc, self._proxies):
            return self._direct
        with self._lock:
            if proxy not in self._via:
                self._via[proxy] = self._urllib3.ProxyManager(proxy, **self._kw)
            return self._via[proxy]

    def get(self, url: str) -> Any:
        """A streamed response: headers read, body not yet."""
        # Bytes as stored: images are compressed already, and Content-Length then
        # counts what the limits count.
        return self._manager(url).request(
            "GET", url, headers={"Accept-Encoding": "identity"},
            preload_content=False, redirect=False, decode_content=False,
        )  # fmt: skip


def _classify(url: str, exc: BaseException) -> ImageError | _Transient:
    """An answer (ImageError) or a failure worth retrying (_Transient)."""
    if isinstance(exc, ImageError):
        return exc
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(chain) < 8:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for e in chain:
        status = _status(e)
        if status is None:
            continue
        if status in (401, 403):
            return ImageError(ErrorType.PERMISSION_DENIED, f"{url}: forbidden ({status})")
        if status in (404, 410):
            return ImageError(ErrorType.FILE_NOT_FOUND, f"no such object: {url}")
        if status in (408, 429) or status >= 500:
            return _Transient(f"HTTP {status}", answered=True)
        return ImageError(ErrorType.FETCH_FAILED, f"{url}: HTTP {status}")
    if isinstance(exc, FileNotFoundError):
        return ImageError(ErrorType.FILE_NOT_FOUND, f"no such object: {url}")
    if isinstance(exc, PermissionError):
        return ImageError(ErrorType.PERMISSION_DENIED, f"{url}: access denied")
    for e in chain:
        if isinstance(e, TimeoutError | ConnectionError) or type(e).__name__ in _TRANSIENT_NAMES:
            return _Transient(f"{type(e).__name__}: {e}", answered=False)
    return ImageError(ErrorType.FETCH_FAILED, f"{url}: {type(exc).__name__}: {exc}")


# Connection-level failures of aiohttp (under s3fs), urllib3 and botocore, by name so
# that none must be importable here; each derives from its own bases rather than
# ConnectionError.
_TRANSIENT_NAMES = frozenset(
    {"ClientConnectorError", "ClientConnectorDNSError", "ClientOSError", "ServerDisconnectedError",
     "ClientPayloadError", "ServerTimeoutError", "ConnectionTimeoutError", "SocketTimeoutError",
     "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
     "ConnectionClosedError", "FSTimeoutError", "IncompleteRead", "ResponseStreamingError",
     "NewConnectionError", "ProtocolError"}
)  # fmt: skip


def _status(e: BaseException) -> int | None:
    status = getattr(e, "status", None)  # _HTTPStatus, aiohttp.ClientResponseError
    if isinstance(status, int):
        return status
    response = getattr(e, "response", None)  # botocore ClientError
    if isinstance(response, dict):
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(code, int):
            return code
    return None


# -- per child ---------------------------------------------------------------------------

_remote: RemoteSource | None = None
_pool: ThreadPoolExecutor | None = None
_last_reader: Reader | None = None


def _child_state(policy: PathPolicy, settings: Settings) -> tuple[RemoteSource, ThreadPoolExecutor]:
    # Built on the first URL a child sees, never in the Celery parent.
    global _remote, _pool
    if _remote is None or _remote.policy is not policy:
        _remote = RemoteSource(policy, settings)
    if _pool is None:
        _pool = ThreadPoolExecutor(
            max_workers=max(1, settings.fetch_concurrency), thread_name_prefix="visionq-fetch"
        )
    return _remote, _pool


class Reader:
    """Opens the images of one chunk in order; URLs are already on their way."""

    def __init__(
        self,
        policy: PathPolicy,
        settings: Settings,
        paths: Sequence[str],
        skip: Collection[int] = (),
    ) -> None:
        self.policy = policy
        self.paths = paths
        items = [(i, p) for i, p in enumerate(paths) if i not in skip and urls.is_url(p)]
        self._results: dict[int, bytes | ImageError] = {}
        self._ahead: Any = None
        self._remote: RemoteSource | None = None
        if items:
            global _last_reader
            # A child runs one chunk at a time: a reader still open here was abandoned
            # (time limit, SystemicError); stop its fetches so no thread waits on it.
            if _last_reader is not None:
                _last_reader.close()
            _last_reader = self
            remote, pool = _child_state(policy, settings)
            self._remote = remote
            window = 2 * max(1, settings.fetch_concurrency)
            self._ahead = iter(
                FetchAhead(items, remote.fetch, pool, window=window,
                           budget_bytes=settings.fetch_ahead_bytes)
            )  # fmt: skip

    def open(self, i: int) -> BinaryIO:
        """The i-th image as a binary file, or ImageError; SystemicError if its
        endpoint has failed for a run of images (the chunk is then better retried)."""
        path = self.paths[i]
        if not urls.is_url(path) or self._ahead is None or self._remote is None:
            return self.policy.open(path)
        while i not in self._results:
            index, result = next(self._ahead)
            self._results[index] = result
        result = self._results.pop(i)
        self._watch(path, result)
        if isinstance(result, ImageError):
            raise result
        return io.BytesIO(result)

    def close(self) -> None:
        """Cancel queued fetches and wake those waiting for bytes."""
        if self._ahead is not None:
            self._ahead.close()

    def _watch(self, url: str, result: bytes | ImageError) -> None:
        if isinstance(result, SourceUnavailable) and result.endpoint_down:
            self.close()  # the chunk is about to fail: stop fetching for it
            raise SystemicError(f"{result.endpoint} is unreachable: {result.message}")
