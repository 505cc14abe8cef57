from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest

from producer.errors import OutputDamaged, OutputForeign, OutputLocked, OutputMismatch
from producer.output import CSV_COLUMNS, CsvWriter, JsonlWriter, check_fresh, open_writer
from visionq.schema import ErrorType, error_item, expand, make_payload


def _records(chunk: int, n: int, job: str = "job", names: list[str] | None = None) -> list[dict]:
    names = names or [f"/img/{chunk}-{i}.jpg" for i in range(n)]
    items = [
        [names[i], [(1, "goldfish", 0.5)], None, None, 1.0, 2.0]
        if i % 2 == 0
        else error_item(names[i], ErrorType.UNREADABLE_IMAGE, 'bad,\n"file"')
        for i in range(n)
    ]
    payload = make_payload(chunk=chunk, items=items, worker="w", device="cpu",
                           weights="x", precision="fp32")  # fmt: skip
    return list(expand(payload, job))


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
    partial = w.encode(_records(9, 4)[:2]) + w.encode(_records(9, 4)[2:3])[:20]
    with open(path, "ab") as fh:
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


# -- names a file system allows ---------------------------------------------------------

NAMES = [
    b"/img/new\nline.jpg",
    b"/img/com,ma.jpg",
    b'/img/quo"te.jpg',
    b"/img/not-utf8-\xff\xfe\x80.jpg",
    b"/img/cr\rname.jpg",
    b"/img/crlf\r\nname.jpg",
    b"/img/tab\tname.jpg",
    "/img/caf\u00e9-\u732b.jpg".encode(),
    b"/img/looks-escaped-\\udcff.jpg",  # a literal backslash-u, not a byte
    b'/img/"\n,",\r\n""\xff.jpg',
]


def _names_file(tmp_path: Path, suffix: str) -> str:
    names = [os.fsdecode(n) for n in NAMES]
    path = str(tmp_path / f"names{suffix}")
    with open_writer(path) as w:
        w.write_chunk(_records(0, 4, names=names[:4]))
        w.write_chunk(_records(1, 6, names=names[4:]))
    return path


def test_csv_round_trips_every_name_through_the_csv_module(tmp_path):
    path = _names_file(tmp_path, ".csv")
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        rows = list(csv.DictReader(fh))
    assert [os.fsencode(r["path"]) for r in rows] == NAMES
    assert [r["chunk"] for r in rows] == ["0"] * 4 + ["1"] * 6
    assert rows[1]["error_message"] == 'bad,\n"file"'  # kept as is, quoted
    raw = Path(path).read_bytes()
    assert b"\xff\xfe\x80" in raw  # the name's own bytes, as the file system has them


def test_jsonl_is_utf8_and_round_trips_every_name_through_json(tmp_path):
    path = _names_file(tmp_path, ".jsonl")
    text = Path(path).read_bytes().decode("utf-8")  # strict: valid UTF-8 throughout
    assert "\\udcff\\udcfe\\udc80" in text
    records = [json.loads(line) for line in text.split("\n") if line]
    assert [os.fsencode(r["path"]) for r in records] == NAMES


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_recover_understands_odd_names(tmp_path, suffix):
    path = _names_file(tmp_path, suffix)
    whole = Path(path).read_bytes()
    w = open_writer(path)
    assert w.recover(lambda c: 4 if c == 0 else 6, "job") == {0, 1}
    w.close()
    assert Path(path).read_bytes() == whole


def test_csv_tear_inside_a_quoted_name_is_cut(tmp_path):
    path = _names_file(tmp_path, ".csv")
    whole = Path(path).read_bytes()
    w = CsvWriter.probe(path)
    tail = w.encode(_records(2, 2, names=[os.fsdecode(NAMES[0]), "/b.jpg"]))
    with open(path, "ab") as fh:  # torn right after the line feed inside the name
        fh.write(tail[: tail.index(b"\n") + 1])
    w = CsvWriter(path)
    assert w.recover(lambda c: {0: 4, 1: 6, 2: 2}[c], "job") == {0, 1}
    w.close()
    assert Path(path).read_bytes() == whole


# -- resuming: cut only what a crash leaves, refuse the rest ------------------------------

SIZES = {7: 3, 2: 5, 0: 1, 4: 2}  # varying sizes, written out of order


def _job_file(tmp_path: Path, suffix: str, order=(7, 2, 0, 4)) -> tuple[str, bytes]:
    path = str(tmp_path / f"r{suffix}")
    with open_writer(path) as w:
        for c in order:
            w.write_chunk(_records(c, SIZES[c]))
    return path, Path(path).read_bytes()


def _chunk_len(c: int) -> int:
    return SIZES[c]  # KeyError for a chunk that is not in the job


def _refused(path: str, exc: type[Exception], match: str, before: bytes) -> None:
    w = open_writer(path)
    with pytest.raises(exc, match=match):
        w.recover(_chunk_len, "job")
    w.close()
    assert Path(path).read_bytes() == before, "a refused file must stay byte-for-byte"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_varying_chunks_in_any_order_recover_in_full(tmp_path, suffix):
    path, before = _job_file(tmp_path, suffix)
    w = open_writer(path)
    assert w.recover(_chunk_len, "job") == {7, 2, 0, 4}
    assert w.records_written == 11
    w.close()
    assert Path(path).read_bytes() == before


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
@pytest.mark.parametrize("keep", [1, 2, 4])
def test_partial_last_chunk_and_torn_record_are_cut(tmp_path, suffix, keep):
    path, before = _job_file(tmp_path, suffix, order=(7, 2))
    w = open_writer(path)
    last = w.encode(_records(4, 2))
    w.close()
    with open(path, "ab") as fh:
        fh.write(last[: len(last) // 2 if keep == 1 else -1 if keep == 2 else 7])
    w = open_writer(path)
    assert w.recover(_chunk_len, "job") == {7, 2}
    w.write_chunk(_records(4, 2))
    w.close()
    assert Path(path).read_bytes() == before + last


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_short_last_group_of_whole_records_is_cut(tmp_path, suffix):
    path, before = _job_file(tmp_path, suffix, order=(7, 2))
    with open_writer(path) as w:
        w.write_chunk(_records(4, 1))  # one of chunk 4's two records
    w = open_writer(path)
    assert w.recover(_chunk_len, "job") == {7, 2}
    w.close()
    assert Path(path).read_bytes() == before


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_damaged_middle_record_is_refused_untouched(tmp_path, suffix):
    path, before = _job_file(tmp_path, suffix)
    lines = before.split(b"\n")
    lines[3] = lines[3][: len(lines[3]) // 2]  # half a record, then the next ones
    damaged = b"\n".join(lines)
    Path(path).write_bytes(damaged)
    _refused(path, OutputDamaged, "is not a visionq record", damaged)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_short_middle_chunk_is_refused_untouched(tmp_path, suffix):
    path = str(tmp_path / f"r{suffix}")
    with open_writer(path) as w:
        w.write_chunk(_records(7, 3))
        w.write_chunk(_records(2, 4))  # one short
        w.write_chunk(_records(0, 1))
    _refused(path, OutputDamaged, "chunk 2 .* only 4 of its 5", Path(path).read_bytes())


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_repeated_chunk_is_refused_untouched(tmp_path, suffix):
    path, _ = _job_file(tmp_path, suffix, order=(7, 2, 7))
    _refused(path, OutputDamaged, "chunk 7 appears twice", Path(path).read_bytes())


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_chunk_outside_the_job_is_refused(tmp_path, suffix):
    path, _ = _job_file(tmp_path, suffix, order=(7, 2))
    with open_writer(path) as w:
        w.write_chunk(_records(99, 1))
        w.write_chunk(_records(0, 1))
    _refused(path, OutputDamaged, "chunk 99, which is not part", Path(path).read_bytes())


def test_stray_quote_in_csv_middle_is_refused_not_cut(tmp_path):
    path, before = _job_file(tmp_path, ".csv")
    at = before.index(b"/img/2-1.jpg")
    damaged = before[:at] + b'"' + before[at:]
    Path(path).write_bytes(damaged)
    _refused(path, OutputDamaged, "left untouched", damaged)


FOREIGN = [
    b"just some notes\nabout my holiday\n",
    b"no newline at all",
    b"\x00" * 64,
    b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8,
    b"a" * (2 << 20),  # one enormous line
]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
@pytest.mark.parametrize("content", FOREIGN, ids=["text", "no-newline", "nul", "png", "huge"])
def test_foreign_file_is_refused_on_resume_and_on_fresh_start(tmp_path, suffix, content):
    path = str(tmp_path / f"mine{suffix}")
    Path(path).write_bytes(content)
    _refused(path, OutputForeign, "does not hold visionq", content)
    with pytest.raises(OutputForeign):
        check_fresh(path)
    with pytest.raises(OutputForeign):
        open_writer(path, fresh=True)
    assert Path(path).read_bytes() == content


def test_output_of_the_other_format_is_foreign(tmp_path):
    _, before = _job_file(tmp_path, ".jsonl")
    as_csv = tmp_path / "r.csv"
    Path(as_csv).write_bytes(before)
    _refused(str(as_csv), OutputForeign, "visionq CSV", before)
    _, csv_bytes = _job_file(tmp_path / "c", ".csv")
    as_jsonl = tmp_path / "c.jsonl"
    as_jsonl.write_bytes(csv_bytes)
    _refused(str(as_jsonl), OutputForeign, "visionq JSONL", csv_bytes)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_fresh_start_empties_visionq_output_of_any_job(tmp_path, suffix):
    path = str(tmp_path / f"r{suffix}")
    with open_writer(path) as w:
        w.write_chunk(_records(0, 2, job="old-job"))
    check_fresh(path)
    with open_writer(path, fresh=True) as w:
        w.write_chunk(_records(3, 1, job="new-job"))
    w = open_writer(path)
    assert w.recover(lambda c: 1, "new-job") == {3}
    w.close()


def test_fresh_start_on_an_empty_file_is_fine(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(b"")
    with open_writer(str(path), fresh=True) as w:
        w.write_chunk(_records(0, 1))
    assert path.read_bytes().startswith(CsvWriter.header.encode() + b"\r\n")


def test_torn_header_alone_is_cut_and_rewritten(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(CsvWriter.header.encode()[:9])
    w = CsvWriter(str(path))
    assert w.recover(lambda c: 1, "job") == set()
    w.write_chunk(_records(0, 1))
    w.close()
    rows = list(csv.reader(io.StringIO(path.read_text(), newline="")))
    assert rows[0] == list(CSV_COLUMNS) and len(rows) == 2


# -- one owner per file --------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_second_writer_is_refused_while_the_first_lives(tmp_path, suffix):
    path, before = _job_file(tmp_path, suffix)
    first = open_writer(path)
    with pytest.raises(OutputLocked, match="another visionq process"):
        open_writer(path)
    with pytest.raises(OutputLocked):
        open_writer(path, fresh=True)
    with pytest.raises(OutputLocked):
        check_fresh(path)
    assert Path(path).read_bytes() == before
    first.close()
    second = open_writer(path)  # free again
    second.close()


def test_lock_is_held_across_processes(tmp_path):
    import subprocess
    import sys

    path, _ = _job_file(tmp_path, ".jsonl")
    with open_writer(path):
        code = (
            "import sys; from producer.output import open_writer; "
            "from producer.errors import OutputLocked\n"
            "try:\n open_writer(sys.argv[1])\nexcept OutputLocked:\n sys.exit(7)"
        )
        rc = subprocess.run([sys.executable, "-c", code, path], timeout=60).returncode
    assert rc == 7


def test_stray_quote_running_to_the_end_is_damage_not_a_tear(tmp_path):
    # One-record chunks without line breaks in any field: after a stray quote, the
    # quote parity stays odd to the end of the file, so the rest reads as one record
    # torn at the end. It hides whole records of the job: refused, not cut.
    path = str(tmp_path / "r.csv")
    with open_writer(path) as w:
        for c in range(6):
            w.write_chunk(_records(c, 1))
    before = Path(path).read_bytes()
    at = before.index(b"/img/2-0.jpg")
    damaged = before[:at] + b'"' + before[at:]
    Path(path).write_bytes(damaged)
    w = open_writer(path)
    with pytest.raises(OutputDamaged, match="is not the start of a visionq record"):
        w.recover(lambda c: 1, "job")
    w.close()
    assert Path(path).read_bytes() == damaged


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_name_damaged_into_another_valid_name_is_refused(tmp_path, suffix):
    """Half of a name with a line break still parses as a record; only the manifest's
    checksum of the chunk's paths can tell, and it refuses the file untouched."""
    from visionq.chunks import checksum

    names = ["/d/odd names/new\nline.jpg", "/d/odd names/com,ma.jpg"]
    path = str(tmp_path / f"r{suffix}")
    with open_writer(path) as w:
        w.write_chunk(_records(0, 2, names=names))
    data = Path(path).read_bytes()
    cut = data.index(b"new") + 1  # "/d/odd names/n" + the rest after the line break
    damaged = data[:cut] + data[data.index(b"\n", cut) :]
    if suffix == ".jsonl":  # JSONL escapes the line break: damage a character instead
        damaged = data.replace(b"com,ma", b"com;ma")
    Path(path).write_bytes(damaged)
    with open_writer(path) as w, pytest.raises(OutputDamaged, match="not the chunk's own"):
        w.recover(lambda c: 2, "job", lambda c: checksum(names))
    assert Path(path).read_bytes() == damaged
