"""Result files: JSONL (one record a line) or CSV, written a whole chunk at a time.

Each chunk's records are written with one ``write``, flushed and fsynced before the
producer marks the chunk done and deletes its result from Redis: after a crash, even
of the machine, only the last chunk can be partial, and that one is still in Redis.

A writer owns its file: it holds an exclusive ``flock`` for its whole life, so a second
``collect`` or ``submit`` into the same file is refused (:class:`OutputLocked`).

:meth:`ResultWriter.recover` reads the whole file before it changes anything. It cuts
only what a crash can leave behind, a torn final record or a partial final chunk, and
refuses anything else (:class:`OutputDamaged`, :class:`OutputForeign`,
:class:`OutputMismatch`), leaving the file byte-for-byte as it was.

File names are bytes on POSIX; Python hands the ones that are not UTF-8 over as
``surrogateescape`` strings. How they are written:

* JSONL stays valid UTF-8: such a byte appears as the JSON escape ``\\udcXX``, which
  ``json.loads`` turns back into the same string, and ``os.fsencode`` into the original
  bytes.
* CSV (RFC 4180: CRLF record ends, fields with commas, quotes or line breaks quoted)
  holds the name's raw bytes, as the file system stores them: read it with
  ``open(f, newline="", encoding="utf-8", errors="surrogateescape")`` and ``csv.reader``,
  then ``os.fsencode`` gives the original name back.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import logging
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from producer.errors import OutputDamaged, OutputForeign, OutputLocked, OutputMismatch
from visionq.chunks import PathHash
from visionq.schema import dumps

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    "path", "ok", "top1_index", "top1_label", "top1_prob", "top_k", "error_type",
    "error_message", "job", "chunk", "worker", "device", "weights", "precision",
    "decode_ms", "infer_ms",
)  # fmt: skip

# No record the writer makes comes near this (a path is at most 4 KiB); a longer one
# means the file is not ours, and bounds what recovery holds in memory.
MAX_RECORD_BYTES = 1 << 20

_JSONL_START = b'{"path":"'  # how every JSONL record begins (schema.dumps, expand order)


class ResultWriter:
    """Append-only writer of chunk records; subclasses choose the record format."""

    header: str | None = None
    terminator = "\n"
    # How a surrogate-escaped byte of a file name is stored (see the module doc).
    encoding_errors = "surrogateescape"

    def __init__(self, path: str, *, fresh: bool = False) -> None:
        """Open ``path`` for appending and lock it.

        Raises:
            OutputLocked: another writer holds the file.
            OutputForeign: ``fresh`` and the file holds something other than visionq
                output in this format (it is left untouched; an empty file is fine).
        """
        self.path = path
        self.records_written = 0
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        existed = os.path.lexists(path)
        fh = open(path, "ab")  # noqa: SIM115 - lives as long as the writer
        try:
            # fsync and locks are for files; --out /dev/stdout or a pipe cannot (and
            # need not) sync, and has no other writer to fear.
            self._durable = stat.S_ISREG(os.fstat(fh.fileno()).st_mode)
            self._empty = True
            if self._durable:
                _lock(fh, path)
                if not existed:
                    _fsync_dir(parent)  # the new name survives a crash, not just the data
                size = os.fstat(fh.fileno()).st_size
                if fresh and size:
                    self._refuse_foreign()
                    fh.truncate(0)
                    os.fsync(fh.fileno())
                    size = 0
                self._empty = size == 0
        except BaseException:
            fh.close()
            raise
        self._fh = fh

    # -- format ---------------------------------------------------------------

    def format(self, record: dict[str, Any]) -> str:
        """One record as text, without its terminator."""
        raise NotImplementedError

    def key_of(self, text: str) -> tuple[str, int, str] | None:
        """(job id, chunk, path) of one written record (terminator stripped), or None
        if it is not a whole, well-formed record."""
        raise NotImplementedError

    def _split(self, fh: IO[bytes]) -> Iterator[tuple[int, bytes, bool]]:
        """(offset, raw bytes, terminated) of each record, in file order; only the last
        can be unterminated. A record over the size bound raises OutputForeign if it
        is the first, OutputDamaged otherwise."""
        offset = 0
        while True:
            raw = fh.readline(MAX_RECORD_BYTES + 1)
            if not raw:
                return
            if len(raw) > MAX_RECORD_BYTES:
                raise self._too_long(offset)
            yield offset, raw, raw.endswith(b"\n")
            offset += len(raw)

    def _plausible_tear(self, raw: bytes, first: bool, job_id: str) -> bool:
        """Whether an unterminated last record can be the start of a record written
        by this writer (the part of one ``write`` that reached the disk)."""
        raise NotImplementedError

    # -- writing --------------------------------------------------------------

    def encode(self, records: Sequence[dict[str, Any]]) -> bytes:
        """The bytes :meth:`write_chunk` appends for ``records`` (with the CSV header
        if the file is empty)."""
        text = "".join(self.format(r) + self.terminator for r in records)
        if self.header and self._empty:
            text = self.header + self.terminator + text
        return text.encode("utf-8", self.encoding_errors)

    def write_chunk(self, records: Sequence[dict[str, Any]]) -> None:
        data = self.encode(records)
        self._fh.write(data)
        self._fh.flush()
        # The caller deletes the chunk's only other copy (its Redis result) next.
        self._sync()
        self._empty = self._empty and not data
        self.records_written += len(records)

    def _sync(self) -> None:
        if self._durable:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Flush, fsync and release the file (and its lock)."""
        if self._fh.closed:
            return
        try:
            self._fh.flush()
            self._sync()
        finally:
            self._fh.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- resuming -------------------------------------------------------------

    def recover(
        self,
        chunk_len: Callable[[int], int],
        job_id: str,
        digest: Callable[[int], str] | None = None,
    ) -> set[int]:
        """Chunks of ``job_id`` the file holds in full; later writes append after them.

        ``chunk_len(i)`` is chunk i's number of images; it may raise IndexError,
        KeyError or ValueError for a chunk that is not part of the job. Chunks may
        appear in any order, each as one group of consecutive records. With
        ``digest(i)`` (the manifest's checksum of chunk i's paths), every whole chunk
        must hold exactly its own paths: a record damaged into another valid record
        (half of a name with a line break, say) is refused too.

        Only what a crash can leave is cut: an unterminated last record, and a last
        chunk group shorter than its chunk. The file is read in full first and
        changed only if it passes; the cut is fsynced.

        Raises:
            OutputMismatch: a record belongs to another job.
            OutputForeign: the file does not begin like visionq output in this format.
            OutputDamaged: anything else that does not parse, a chunk group before the
                last one that is short, or a chunk that appears twice.
        """
        if not self._durable:
            return set()  # a pipe or terminal: nothing to resume
        plan = self._plan(chunk_len, job_id, digest)
        if plan.cut < plan.size:
            log.warning(
                "%s: cutting %d bytes of a partial last chunk or torn record at byte %d",
                self.path, plan.size - plan.cut, plan.cut,
            )  # fmt: skip
            self._fh.truncate(plan.cut)
            os.fsync(self._fh.fileno())
        self._empty = plan.cut == 0
        self.records_written = plan.records
        return plan.complete

    def _plan(
        self, chunk_len: Callable[[int], int], job_id: str, digest: Callable[[int], str] | None
    ) -> _Plan:
        """Read-only pass over the file: what it holds and where to cut, or a refusal."""
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            plan = _Plan(size=size, cut=size)
            group: _Group | None = None
            first = True  # nothing recognized yet: a bad record means a foreign file
            number = 0
            for offset, raw, terminated in self._split(fh):
                number += 1
                if not terminated:  # the last record, torn
                    if not self._plausible_tear(raw, first, job_id):
                        if first:
                            raise self._foreign()
                        raise OutputDamaged(
                            f"{self.path}: the last record (byte {offset}) is incomplete "
                            "and is not the start of a visionq record; the file was left "
                            "untouched"
                        )
                    plan.cut = offset
                    break
                if first and self.header:
                    if raw.rstrip(b"\r\n") != self.header.encode():
                        raise self._foreign()
                    first = False
                    continue
                key = self.key_of(raw.decode("utf-8", "surrogateescape").rstrip("\r\n"))
                if key is None:
                    if first:
                        raise self._foreign()
                    raise OutputDamaged(
                        f"{self.path}: record {number} (byte {offset}) is not a visionq "
                        "record; a crash can only tear the last one, so the file was left "
                        "untouched. Repair or remove that record, or collect into another "
                        "file"
                    )
                first = False
                job, chunk, path = key
                if job != job_id:
                    raise OutputMismatch(
                        f"{self.path} holds results of job {job}, not {job_id}; "
                        "collect into another file"
                    )
                if group is not None and chunk == group.chunk:
                    group.add(path)
                    if group.records > group.want:
                        raise self._damaged_group(group, f"more than its {group.want} records")
                    continue
                if group is not None:
                    if group.records < group.want:
                        raise self._damaged_group(
                            group,
                            f"only {group.records} of its {group.want} records, and other "
                            "chunks follow it",
                        )
                    self._verify(group, digest)
                    plan.complete.add(group.chunk)
                    plan.records += group.records
                if chunk in plan.complete:
                    raise OutputDamaged(
                        f"{self.path}: chunk {chunk} appears twice (again at byte {offset}); "
                        "the file was left untouched"
                    )
                group = _Group(chunk, offset, 0, self._want(chunk_len, chunk, offset))
                group.add(path)
        if group is not None:
            if group.records == group.want:
                self._verify(group, digest)
                plan.complete.add(group.chunk)
                plan.records += group.records
            else:  # the last chunk, partly written: it is re-collected whole
                plan.cut = min(plan.cut, group.start)
        return plan

    def _want(self, chunk_len: Callable[[int], int], chunk: int, offset: int) -> int:
        try:
            want = int(chunk_len(chunk)) if chunk >= 0 else 0
        except (IndexError, KeyError, ValueError):
            want = 0
        if want < 1:
            raise OutputDamaged(
                f"{self.path}: byte {offset} holds a record of chunk {chunk}, which is not "
                "part of this job; the file was left untouched"
            )
        return want

    def _verify(self, group: _Group, digest: Callable[[int], str] | None) -> None:
        if digest is not None and group.hash.hexdigest() != digest(group.chunk):
            raise self._damaged_group(group, "paths that are not the chunk's own")

    def _damaged_group(self, group: _Group, what: str) -> OutputDamaged:
        return OutputDamaged(
            f"{self.path}: chunk {group.chunk} (from byte {group.start}) holds {what}; "
            "a crash can only leave the last chunk short, so the file was left untouched"
        )

    def _foreign(self) -> OutputForeign:
        kind = "CSV" if self.header else "JSONL"
        return OutputForeign(
            f"{self.path} is not empty and does not hold visionq {kind} output; it was "
            "left untouched. Choose another --out, or remove the file"
        )

    def _too_long(self, offset: int) -> OutputDamaged | OutputForeign:
        if offset == 0:
            return self._foreign()
        return OutputDamaged(
            f"{self.path}: the record at byte {offset} is longer than "
            f"{MAX_RECORD_BYTES} bytes, so this is not visionq output; the file was left "
            "untouched"
        )

    @classmethod
    def probe(cls, path: str) -> ResultWriter:
        """A writer of this format that reads ``path`` only: no file handle, no lock."""
        writer = cls.__new__(cls)
        writer.path = path
        writer._empty = False  # encode() gives records only
        writer._durable = False
        return writer

    def _refuse_foreign(self) -> None:
        """Raise OutputForeign unless the file begins like visionq output (of any job)
        in this writer's format: only then may a fresh start empty it."""
        with open(self.path, "rb") as fh:
            try:
                for _, raw, terminated in self._split(fh):
                    if not terminated:
                        ok = self._plausible_tear(raw, True, "")
                    elif self.header:
                        ok = raw.rstrip(b"\r\n") == self.header.encode()
                    else:
                        text = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
                        ok = self.key_of(text) is not None
                    if ok:
                        return
                    break
            except (OutputDamaged, OutputForeign):
                pass
        raise self._foreign()


@dataclass
class _Group:
    chunk: int
    start: int  # byte offset of the group's first record
    records: int
    want: int
    hash: PathHash = field(default_factory=PathHash)  # of the paths, as the manifest's

    def add(self, path: str) -> None:
        self.records += 1
        self.hash.add(path)


@dataclass
class _Plan:
    size: int
    cut: int  # where the file ends once recovered
    records: int = 0  # records of the complete chunks
    complete: set[int] = field(default_factory=set)


class JsonlWriter(ResultWriter):
    # Valid UTF-8 whatever the names: a lone surrogate becomes the escape \\udcXX.
    encoding_errors = "backslashreplace"

    def format(self, record: dict[str, Any]) -> str:
        return dumps(record)

    def key_of(self, text: str) -> tuple[str, int, str] | None:
        try:
            record = json.loads(text)
        except ValueError:
            return None
        if not isinstance(record, dict) or not isinstance(record.get("path"), str):
            return None
        job, chunk = record.get("job"), record.get("chunk")
        if not isinstance(job, str) or type(chunk) is not int or "ok" not in record:
            return None
        return job, chunk, record["path"]

    def _plausible_tear(self, raw: bytes, first: bool, job_id: str) -> bool:
        n = min(len(raw), len(_JSONL_START))
        return raw[:n] == _JSONL_START[:n]


class CsvWriter(ResultWriter):
    header = ",".join(CSV_COLUMNS)
    # RFC 4180 record ends: the csv module then quotes a field holding a lone CR too.
    terminator = "\r\n"

    def format(self, record: dict[str, Any]) -> str:
        top = record["top_k"][0] if record["top_k"] else {}
        err = record["error"] or {}
        row = {
            **{k: record.get(k) for k in CSV_COLUMNS if k in record},
            "ok": "true" if record["ok"] else "false",
            "top1_index": top.get("index", ""),
            "top1_label": top.get("label", ""),
            "top1_prob": top.get("prob", ""),
            "top_k": json.dumps(record["top_k"], ensure_ascii=False, separators=(",", ":")),
            "error_type": err.get("type", ""),
            "error_message": err.get("message") or "",
        }
        buf = io.StringIO()
        # The terminator is the writer's, so fields holding CR or LF are quoted.
        csv.DictWriter(buf, CSV_COLUMNS, lineterminator=self.terminator).writerow(row)
        return buf.getvalue()[: -len(self.terminator)]

    def key_of(self, text: str) -> tuple[str, int, str] | None:
        try:
            rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
        except csv.Error:
            return None
        if len(rows) != 1 or len(rows[0]) != len(CSV_COLUMNS):
            return None
        row = rows[0]
        if row[_CSV_OK] not in ("true", "false") or not row[_CSV_CHUNK].isdigit():
            return None
        return row[_CSV_JOB], int(row[_CSV_CHUNK]), row[_CSV_PATH]

    def _split(self, fh: IO[bytes]) -> Iterator[tuple[int, bytes, bool]]:
        # A record ends at a line feed outside quotes. Quote and LF are ASCII, so they
        # never occur inside a UTF-8 sequence or a raw non-UTF-8 byte of a name, and
        # an escaped quote ("") leaves the parity unchanged.
        offset = 0
        parts: list[bytes] = []
        length = quotes = 0
        while True:
            raw = fh.readline(MAX_RECORD_BYTES + 1 - length)
            if not raw:
                if parts:
                    yield offset, b"".join(parts), False
                return
            parts.append(raw)
            length += len(raw)
            quotes += raw.count(b'"')
            if raw.endswith(b"\n") and quotes % 2 == 0:
                record = b"".join(parts)
                yield offset, record, True
                offset += length
                parts, length, quotes = [], 0, 0
            elif length >= MAX_RECORD_BYTES:
                raise self._too_long(offset)

    def _plausible_tear(self, raw: bytes, first: bool, job_id: str) -> bool:
        if first:  # the header is written with the first chunk, in the same write
            return self.header is not None and self.header.encode().startswith(raw)
        # An unterminated quoted field runs to the end of the file. A real tear lies
        # within one record; a stray quote earlier in the file would swallow whole
        # records after it, so a tail hiding one of them is damage, not a tear.
        lines = raw.split(b"\n")
        for i in range(1, len(lines) - 1):
            quotes = 0
            for j in range(i, len(lines) - 1):
                quotes += lines[j].count(b'"')
                if quotes % 2 == 0:
                    text = b"\n".join(lines[i : j + 1]).decode("utf-8", "surrogateescape")
                    key = self.key_of(text.rstrip("\r"))
                    if key is not None and (not job_id or key[0] == job_id):
                        return False
                    break
        return True


_CSV_OK, _CSV_PATH, _CSV_JOB, _CSV_CHUNK = (
    CSV_COLUMNS.index(c) for c in ("ok", "path", "job", "chunk")
)


def open_writer(path: str, *, fresh: bool = False) -> ResultWriter:
    """CSV when the name ends in .csv, JSONL otherwise.

    ``fresh`` empties the file first, but only if it holds visionq output (or nothing);
    see :class:`ResultWriter` for the errors it raises.
    """
    return _writer_class(path)(path, fresh=fresh)


def check_fresh(path: str) -> None:
    """Raise what ``open_writer(path, fresh=True)`` would, without changing anything:
    lets a command refuse a bad ``--out`` before it publishes a job."""
    if not _is_regular(path):
        return
    with open(path, "rb") as fh:
        _lock(fh, path, probe=True)  # released with the file: only asks whether it is free
        if os.fstat(fh.fileno()).st_size:
            _writer_class(path).probe(path)._refuse_foreign()


def _writer_class(path: str) -> type[ResultWriter]:
    return CsvWriter if path.lower().endswith(".csv") else JsonlWriter


def _lock(fh: IO[bytes], path: str, *, probe: bool = False) -> None:
    """Take the exclusive lock that makes this process the file's one writer."""
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutputLocked(
            f"{path} is being written by another visionq process (a collect or submit "
            "still running); wait for it to end, or write to another file"
        ) from None
    except OSError as exc:
        # Some network file systems have no locks (and NFS emulates flock with fcntl
        # locks, which refuse an exclusive lock on a read-only probe): writing on is
        # better than refusing.
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
            raise
        if not probe:
            log.warning("%s: cannot lock (%s); make sure no other process writes it", path, exc)


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return False
