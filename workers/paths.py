"""Turn a path from a task into an open file, or a per-image error.

Checks run in an order that never opens what it must not: NUL bytes and relative
paths are refused, the ``VISIONQ_PATH_MAP`` rewrite applies, the path is resolved
with ``realpath`` (following every symlink and ``..``) and only then checked against
``VISIONQ_ALLOWED_ROOTS``. The file is opened non-blocking and without
following a last-moment symlink, and must still be a regular file once open, so a
FIFO or device swapped in cannot block or stream forever.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from typing import BinaryIO

from visionq.schema import ErrorType
from visionq.urls import is_url
from workers.errors import ImageError, systemic_os_error


def rewrite(path: str, rewrites: Sequence[tuple[str, str]]) -> str:
    for src, dst in rewrites:
        if path == src or path.startswith(src.rstrip("/") + "/"):
            return dst + path[len(src.rstrip("/")) :]
    return path


def within(real: str, roots: Sequence[str]) -> bool:
    return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


class PathPolicy:
    """Where a worker may read, and how big a file may be.

    ``roots`` may mix folders and URL prefixes; URL inputs are checked against
    ``url_roots`` by ``workers.sources``.
    """

    def __init__(
        self,
        *,
        roots: Sequence[str] = (),
        rewrites: Sequence[tuple[str, str]] = (),
        max_bytes: int,
    ) -> None:
        # Any root at all restricts local paths, even when every root is a URL prefix.
        self.restricted = bool(roots)
        self.roots = tuple(os.path.realpath(r) for r in roots if not is_url(r))
        self.url_roots = tuple(r for r in roots if is_url(r))
        self.rewrites = tuple(rewrites)
        self.max_bytes = max_bytes

    def resolve(self, raw: object) -> str:
        """The path to open (resolved when roots apply), or ImageError. Reads nothing."""
        if not isinstance(raw, str) or not raw:
            raise ImageError(ErrorType.INVALID_PATH, f"not a path: {raw!r}")
        if "\x00" in raw:
            raise ImageError(ErrorType.INVALID_PATH, "path contains a NUL byte")
        path = rewrite(raw, self.rewrites)
        if not os.path.isabs(path):
            raise ImageError(ErrorType.INVALID_PATH, f"path is not absolute: {path}")
        if not self.restricted:
            # No containment to check, so the kernel may follow links itself: resolving
            # in Python first would cost more than the open (jobs of millions of paths).
            # Only ".." is resolved here, as before, so "a/missing/../b" still names b.
            return os.path.realpath(path) if "/.." in path else path
        real = os.path.realpath(path)
        if not within(real, self.roots):
            raise ImageError(
                ErrorType.PATH_NOT_ALLOWED,
                f"{path} resolves outside VISIONQ_ALLOWED_ROOTS",
            )
        return real

    def _check_opened(self, fd: int, raw: object) -> None:
        """Re-check containment on what was actually opened.

        ``realpath`` and ``open`` are two steps: a folder on the way swapped for a
        symlink in between would escape the roots (O_NOFOLLOW guards only the last
        component). The kernel's name for the open descriptor closes that gap. The
        file was opened non-blocking and is closed unread if it fails.
        """
        if not self.restricted:
            return
        try:
            actual = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return  # no /proc: the realpath check above is all there is
        if not within(actual, self.roots):
            raise ImageError(
                ErrorType.PATH_NOT_ALLOWED,
                f"{raw} was swapped to a path outside VISIONQ_ALLOWED_ROOTS while opening",
            )

    def open(self, raw: object) -> BinaryIO:
        real = self.resolve(raw)
        # With roots, ``real`` is fully resolved: a symlink appearing there now is a swap.
        nofollow = os.O_NOFOLLOW if self.restricted else 0
        try:
            fd = os.open(real, os.O_RDONLY | nofollow | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ImageError(ErrorType.FILE_NOT_FOUND, f"no such file: {raw}") from None
        except NotADirectoryError:
            raise ImageError(ErrorType.FILE_NOT_FOUND, f"no such file: {raw}") from None
        except PermissionError:
            raise ImageError(ErrorType.PERMISSION_DENIED, f"permission denied: {raw}") from None
        except OSError as exc:
            if (systemic := systemic_os_error(exc, raw)) is not None:
                raise systemic from None
            raise ImageError(ErrorType.NOT_A_FILE, f"cannot open {raw}: {exc.strerror}") from None
        try:
            self._check_opened(fd, raw)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = "folder" if stat.S_ISDIR(st.st_mode) else "special file"
                raise ImageError(ErrorType.NOT_A_FILE, f"{raw} is a {kind}, not an image file")
            if st.st_size > self.max_bytes:
                raise ImageError(
                    ErrorType.FILE_TOO_LARGE,
                    f"{raw} is {st.st_size} bytes; the limit is {self.max_bytes} "
                    "(VISIONQ_MAX_IMAGE_BYTES)",
                )
            if st.st_size == 0:
                raise ImageError(ErrorType.UNREADABLE_IMAGE, f"{raw} is empty")
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
