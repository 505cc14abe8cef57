"""Result files: JSONL (one record a line) or CSV, written a whole chunk at a time.

Each chunk's records are written with one ``write``, flushed and fsynced before the
producer marks the chunk done and deletes its result from Redis: after a crash, even
of the machine, only the last chunk can be partial, and that one is still in Redis.
:meth:`ResultWriter.recover` finds the chunks a file already holds in full and cuts off
a torn or partial tail, so ``visionq collect`` can append exactly what is missing.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from collections.abc import Callable, Sequence
from typing import Any

from producer.errors import OutputMismatch
from visionq.schema import dumps

CSV_COLUMNS = (
    "path", "ok", "top1_index", "top1_label", "top1_prob", "top_k", "error_type",
    "error_message", "job", "chunk", "worker", "device", "weights", "precision",
    "decode_ms", "infer_ms",
)  # fmt: skip


class ResultWriter:
    """Append-only writer of chunk records; subclasses choose the line format."""

    header: str | None = None

    def __init__(self, path: str, *, fresh: bool = False) -> None:
        self.path = path
        self.records_written = 0
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        if fresh and _is_regular(path):
            os.truncate(path, 0)
        self._fh = open(path, "ab")  # noqa: SIM115 - lives as long as the writer
        # fsync is for files; --out /dev/stdout or a pipe cannot (and need not) sync.
        self._durable = stat.S_ISREG(os.fstat(self._fh.fileno()).st_mode)

    # -- format ---------------------------------------------------------------

    def format(self, record: dict[str, Any]) -> str:
        raise NotImplementedError

    def key_of(self, line: str) -> tuple[str, int] | None:
        """(job id, chunk) of a written line, or None if it is not a record."""
        raise NotImplementedError

    # -- writing --------------------------------------------------------------

    def write_chunk(self, records: Sequence[dict[str, Any]]) -> None:
        text = "".join(self.format(r) + "\n" for r in records)
        if self.header and self._fh.tell() == 0:
            text = self.header + "\n" + text
        self._fh.write(text.encode("utf-8", "surrogateescape"))
        self._fh.flush()
        # The caller deletes the chunk's only other copy (its Redis result) next.
        self._sync()
        self.records_written += len(records)

    def _sync(self) -> None:
        if self._durable:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.flush()
        self._sync()
        self._fh.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- resuming -------------------------------------------------------------

    def recover(self, chunk_len: Callable[[int], int], job_id: str) -> set[int]:
        """Chunks of ``job_id`` held in full; a torn or partial tail is truncated away.

        A file holding another job's records is refused rather than mixed into: its
        chunk numbers would otherwise pass for this job's.
        """
        with open(self.path, "rb") as fh:
            data = fh.read()
        groups: list[tuple[int, int, int]] = []  # (chunk, start offset, lines)
        offset = 0
        good_end = 0
        while offset < len(data):
            nl = data.find(b"\n", offset)
            if nl < 0:
                break  # torn last line
            start, offset = offset, nl + 1
            raw = data[start:offset]
            line = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
            if self.header and start == 0 and line == self.header:
                good_end = offset
                continue
            key = self.key_of(line)
            if key is None:
                break
            if key[0] != job_id:
                raise OutputMismatch(
                    f"{self.path} holds results of job {key[0]}, not {job_id}; "
                    "collect into another file"
                )
            chunk = key[1]
            if groups and groups[-1][0] == chunk:
                c, s, n = groups[-1]
                groups[-1] = (c, s, n + 1)
            else:
                groups.append((chunk, start, 1))
            good_end = offset
        if groups and groups[-1][2] < chunk_len(groups[-1][0]):
            good_end = groups.pop()[1]
        if good_end < len(data):
            self._fh.truncate(good_end)
            self._fh.seek(good_end)
        complete = {c for c, _, _ in groups}
        self.records_written = sum(n for _, _, n in groups)
        return complete


class JsonlWriter(ResultWriter):
    def format(self, record: dict[str, Any]) -> str:
        return dumps(record)

    def key_of(self, line: str) -> tuple[str, int] | None:
        try:
            record = json.loads(line)
            return str(record["job"]), int(record["chunk"])
        except (ValueError, KeyError, TypeError):
            return None


class CsvWriter(ResultWriter):
    header = ",".join(CSV_COLUMNS)

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
            # One physical line per row keeps recovery line-based.
            "error_message": (err.get("message") or "").replace("\n", " "),
        }
        buf = io.StringIO()
        csv.DictWriter(buf, CSV_COLUMNS, lineterminator="").writerow(row)
        return buf.getvalue()

    def key_of(self, line: str) -> tuple[str, int] | None:
        try:
            row = next(csv.reader([line]))
            return row[_CSV_JOB], int(row[_CSV_CHUNK])
        except (StopIteration, ValueError, IndexError):
            return None


_CSV_JOB, _CSV_CHUNK = CSV_COLUMNS.index("job"), CSV_COLUMNS.index("chunk")


def open_writer(path: str, *, fresh: bool = False) -> ResultWriter:
    """CSV when the name ends in .csv, JSONL otherwise; ``fresh`` empties the file first."""
    cls = CsvWriter if path.lower().endswith(".csv") else JsonlWriter
    return cls(path, fresh=fresh)


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return False
