from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from producer.errors import OutputMismatch
from producer.output import CSV_COLUMNS, CsvWriter, JsonlWriter, open_writer
from visionq.schema import ErrorType, error_item, expand, make_payload


def _records(chunk: int, n: int) -> list[dict]:
    items = [
        [f"/img/{chunk}-{i}.jpg", [(1, "goldfish", 0.5)], None, None, 1.0, 2.0]
        if i % 2 == 0
        else error_item(f"/img/{chunk}-{i}.jpg", ErrorType.UNREADABLE_IMAGE, 'bad,\n"file"')
        for i in range(n)
    ]
    payload = make_payload(chunk=chunk, items=items, worker="w", device="cpu",
                           weights="x", precision="fp32")  # fmt: skip
    return list(expand(payload, "job"))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_round_trip_and_recover_complete_file(tmp_path, suffix):
    path = str(tmp_path / f"r{suffix}")
    with open_writer(path) as w:
        w.write_chunk(_records(0, 3))
        w.write_chunk(_records(1, 3))
    w = open_writer(path)
    assert w.recover(lambda c: 3, "job") == {0, 1}
    w.write_chunk(_records(2, 2))
    w.close()
    if suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(Path(path).read_text(), newline="")))
        assert list(rows[0]) == list(CSV_COLUMNS)
        assert [r["ok"] for r in rows[:3]] == ["true", "false", "true"]
        assert rows[1]["error_type"] == "UnreadableImage" and rows[0]["top1_label"] == "goldfish"
        assert len(rows) == 8
    else:
        lines = [json.loads(line) for line in Path(path).read_text().splitlines()]
        assert [r["chunk"] for r in lines] == [0, 0, 0, 1, 1, 1, 2, 2]


@pytest.mark.parametrize("cls", [JsonlWriter, CsvWriter])
def test_recover_cuts_torn_line_and_partial_chunk(tmp_path, cls):
    path = str(tmp_path / ("r.csv" if cls is CsvWriter else "r.jsonl"))
    with cls(path) as w:
        w.write_chunk(_records(0, 4))
        w.write_chunk(_records(5, 4))
    size_two_chunks = Path(path).stat().st_size
    # Simulate a crash: half of chunk 9 made it, the last line torn mid-way.
    partial = "".join(w.format(r) + "\n" for r in _records(9, 4)[:2]) + '{"path": "/img/9-'
    with open(path, "a") as fh:
        fh.write(partial)
    w = cls(path)
    assert w.recover(lambda c: 4, "job") == {0, 5}
    w.close()
    assert Path(path).stat().st_size == size_two_chunks


def test_recover_empty_file(tmp_path):
    w = JsonlWriter(str(tmp_path / "r.jsonl"))
    assert w.recover(lambda c: 1, "job") == set()
    w.close()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resuming_another_jobs_file_is_refused(tmp_path, suffix):
    path = str(tmp_path / f"r{suffix}")
    with open_writer(path) as w:
        w.write_chunk(_records(0, 2))
    w = open_writer(path)
    with pytest.raises(OutputMismatch, match="holds results of job job"):
        w.recover(lambda c: 2, "another-job")
    w.close()


def test_fresh_writer_starts_empty(tmp_path):
    path = str(tmp_path / "r.jsonl")
    with open_writer(path) as w:
        w.write_chunk(_records(0, 2))
    with open_writer(path, fresh=True) as w:
        w.write_chunk(_records(1, 1))
    assert [json.loads(x)["chunk"] for x in Path(path).read_text().splitlines()] == [1]
