"""A job's local manifest: every path once, on disk, and the chunks cut from it.

The manifest is the job's source of truth, so its size never lands in memory or in
Redis. It lives in ``<state dir>/jobs/<job>/``:

* ``meta.json``: options, state and counts, replaced atomically;
* ``paths``: one path per line, written once while the job is submitted: as its bytes
  (a non-UTF-8 name's original bytes included), or as a JSON string when the name
  holds a line break or starts with a quote, so every name round-trips;
* ``index``: one fixed-size record per chunk cut so far (byte offset, first position,
  count, checksum), so chunk ``i`` is addressable by ``i`` and verifiable.

Chunks are cut lazily, as the window of chunks in flight allows (see
:mod:`producer.sizing`), so their sizes can follow the work left and the fleet.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import time
from collections.abc import Iterable, Iterator
from typing import Any

from producer.errors import JobNotFound, ManifestMismatch
from visionq import protocol
from visionq.chunks import ChunkEntry, PathHash

_INDEX = struct.Struct("<QQI8s")  # byte offset, first position, count, checksum
_SYNC_EVERY_S = 2.0


def jobs_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "jobs")


class LocalManifest:
    """The manifest of one job in ``state_dir``. Not thread-safe; one owner at a time."""

    def __init__(self, state_dir: str, job_id: str) -> None:
        self.job_id = job_id
        self.folder = os.path.join(jobs_dir(state_dir), job_id)
        self.meta_path = os.path.join(self.folder, "meta.json")
        self.paths_path = os.path.join(self.folder, "paths")
        self.index_path = os.path.join(self.folder, "index")
        self._meta: dict[str, Any] | None = None
        self._index: Any = None  # append handle
        self._reader: Any = None  # sequential handle over ``paths`` for cutting
        self._n_cut = 0
        self._cut_paths = 0
        self._cut_offset = 0
        self._last_sync = 0.0
        self._hash = PathHash()  # of the paths staged by this process, in order

    # -- lifecycle ------------------------------------------------------------------

    def exists(self) -> bool:
        return os.path.exists(self.meta_path)

    def create(self, meta: dict[str, Any]) -> None:
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        self._meta = {**meta, "state": protocol.SUBMITTING, "images": 0, "sum": None}
        for path in (self.paths_path, self.index_path):
            with open(path, "wb"):
                pass
        self._write_meta()

    def stage(self, paths: Iterable[str], *, resume: bool = False) -> int:
        """Append ``paths`` to the manifest; return the number of paths it holds.

        With ``resume``, ``paths`` must start with exactly the paths already staged
        (the same inputs, walked in the same sorted order): those are checked and
        skipped, and the rest is appended. Anything else raises ManifestMismatch.
        """
        it = iter(paths)
        staged = self.meta()["images"]
        self._hash = PathHash()
        if resume and staged:
            self._check_prefix(it, staged)
        with open(self.paths_path, "ab") as fh:
            batch: list[str] = []
            try:
                for path in it:
                    batch.append(path)
                    if len(batch) >= 4096:
                        self._append(fh, batch)
            finally:
                # What was read before an interruption is staged, so a resume skips it.
                self._append(fh, batch)
                fh.flush()
                os.fsync(fh.fileno())
        return self.images

    def _append(self, fh: Any, batch: list[str]) -> None:
        n = len(batch)
        if n:
            for p in batch:
                self._hash.add(p)
            fh.write(b"".join(encode_line(p) for p in batch))
            batch.clear()
            self.meta()["images"] += n
            if time.monotonic() - self._last_sync > _SYNC_EVERY_S:
                # Counted in the meta file now and then, so an interrupted submit can
                # say how far it got and be resumed from there.
                self._last_sync = time.monotonic()
                fh.flush()
                self._write_meta()

    def _check_prefix(self, it: Iterator[str], staged: int) -> None:
        have = 0
        for have, old in enumerate(self.iter_paths(), 1):
            new = next(it, None)
            self._hash.add(old)
            if new != old:
                raise ManifestMismatch(
                    f"job {self.job_id}: input {have} is {new!r}, but the job has {old!r} "
                    "there; resume with the same inputs"
                )
            if have == staged:
                break

    def seal(self) -> None:
        """Mark every path staged (after :meth:`stage`): from now on the job can complete."""
        meta = self.meta()
        meta["sum"] = self._hash.hexdigest()  # of every path, in order
        meta["state"] = protocol.SUBMITTED
        self._write_meta()

    def update(self, **fields: Any) -> None:
        self.meta().update(fields)
        self._write_meta()

    def delete(self) -> None:
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def close(self) -> None:
        for fh in (self._index, self._reader):
            if fh is not None:
                fh.close()
        self._index = self._reader = None

    # -- reading --------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            try:
                with open(self.meta_path, encoding="utf-8") as fh:
                    self._meta = json.load(fh)
            except FileNotFoundError:
                raise JobNotFound(f"job {self.job_id} has no manifest in {self.folder}") from None
        return self._meta

    @property
    def images(self) -> int:
        return int(self.meta()["images"])

    @property
    def sealed(self) -> bool:
        return self.meta()["state"] != protocol.SUBMITTING

    def iter_paths(self) -> Iterator[str]:
        with open(self.paths_path, "rb") as fh:
            for line in fh:
                yield decode_line(line)

    # -- chunks ---------------------------------------------------------------------

    def _load_index(self) -> None:
        if self._index is not None:
            return
        size = os.path.getsize(self.index_path)
        # A record torn by a crash mid-write is dropped: that chunk is cut again.
        whole = size - size % _INDEX.size
        self._index = open(self.index_path, "r+b")  # noqa: SIM115 - lives with the manifest
        self._index.truncate(whole)
        self._n_cut = whole // _INDEX.size
        if self._n_cut:
            raw = os.pread(self._index.fileno(), _INDEX.size, whole - _INDEX.size)
            offset, start, count, _ = _INDEX.unpack(raw)
            self._cut_paths = start + count
            self._cut_offset = offset + self._byte_len(offset, count)
        self._index.seek(whole)

    def _byte_len(self, offset: int, count: int) -> int:
        with open(self.paths_path, "rb") as fh:
            fh.seek(offset)
            return sum(len(fh.readline()) for _ in range(count))

    def _record(self, i: int) -> tuple[int, int, int, bytes]:
        self._load_index()
        raw = os.pread(self._index.fileno(), _INDEX.size, i * _INDEX.size) if i >= 0 else b""
        if len(raw) != _INDEX.size:
            raise IndexError(f"job {self.job_id} has no chunk {i}")
        return _INDEX.unpack(raw)

    @property
    def n_cut(self) -> int:
        self._load_index()
        return self._n_cut

    @property
    def remaining(self) -> int:
        """Paths not yet in any chunk."""
        self._load_index()
        return self.images - self._cut_paths

    def cut(self, size: int) -> ChunkEntry:
        """The next chunk: up to ``size`` paths after the last chunk cut."""
        self._load_index()
        if self._reader is None:
            self._reader = open(self.paths_path, "rb")  # noqa: SIM115
        self._reader.seek(self._cut_offset)
        paths = []
        nbytes = 0
        for _ in range(min(size, self.remaining)):
            line = self._reader.readline()
            nbytes += len(line)
            paths.append(decode_line(line))
        entry = ChunkEntry.build(self.job_id, self._n_cut, self._cut_paths, paths)
        self._index.write(
            _INDEX.pack(self._cut_offset, entry.start, len(paths), bytes.fromhex(entry.sum))
        )
        # Flushed, not fsynced, per chunk: a producer crash keeps it; a host crash may
        # lose the newest records, and then those chunk numbers are cut again with
        # other paths. Payloads of the old cut then fail the checksum and are dropped.
        self._index.flush()
        self._n_cut += 1
        self._cut_paths += len(paths)
        self._cut_offset += nbytes
        return entry

    def entry(self, i: int) -> ChunkEntry:
        """Chunk ``i`` as cut, read back from disk."""
        offset, start, count, digest = self._record(i)
        with open(self.paths_path, "rb") as fh:
            fh.seek(offset)
            paths = tuple(decode_line(fh.readline()) for _ in range(count))
        entry = ChunkEntry(self.job_id, i, start, paths, digest.hex())
        if not entry.matches(paths):
            raise ManifestMismatch(f"job {self.job_id}: chunk {i} does not match its checksum")
        return entry

    def chunk_len(self, i: int) -> int:
        return self._record(i)[2]

    def digest(self, i: int) -> str:
        """Chunk ``i``'s checksum, as recorded when it was cut."""
        return self._record(i)[3].hex()

    def sync(self) -> None:
        """Make the chunk index durable (called now and then by the collector)."""
        if self._index is not None:
            self._index.flush()
            os.fsync(self._index.fileno())

    # -- internals ------------------------------------------------------------------

    def _write_meta(self) -> None:
        tmp = self.meta_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self._meta, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.meta_path)


def encode_line(path: str) -> bytes:
    """One manifest line for ``path``: its bytes, or JSON when bytes would not do."""
    if "\n" not in path and "\r" not in path and not path.startswith('"'):
        try:
            return path.encode("utf-8", "surrogateescape") + b"\n"
        except UnicodeEncodeError:  # a surrogate that is no escaped byte
            pass
    return json.dumps(path).encode("ascii") + b"\n"


def decode_line(line: bytes) -> str:
    """The path that :func:`encode_line` wrote."""
    if line.startswith(b'"'):
        return json.loads(line)
    return line.rstrip(b"\n").decode("utf-8", "surrogateescape")


def prune(state_dir: str, older_than_s: float) -> int:
    """Remove manifests of finished or cancelled jobs untouched for ``older_than_s``."""
    root = jobs_dir(state_dir)
    removed = 0
    now = time.time()
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(root):
            meta_path = os.path.join(root, name, "meta.json")
            try:
                if now - os.path.getmtime(meta_path) < older_than_s:
                    continue
                with open(meta_path, encoding="utf-8") as fh:
                    state = json.load(fh).get("state")
            except (OSError, ValueError):
                continue
            if state in (protocol.COMPLETE, protocol.CANCELLED):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
                removed += 1
    return removed
