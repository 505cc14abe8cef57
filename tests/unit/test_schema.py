from __future__ import annotations

import json

from visionq.schema import (
    RECORD_FIELDS,
    ErrorType,
    error_item,
    expand,
    failed_records,
    make_payload,
)


def _payload():
    return make_payload(
        chunk=3,
        items=[
            ["/a.jpg", [(281, "tabby", 0.61), (282, "tiger cat", 0.2)], None, None, 4.0, 20.0],
            error_item("/b.jpg", ErrorType.FILE_NOT_FOUND, "no such file: /b.jpg"),
        ],
        worker="w1@h",
        device="cpu",
        weights="file-abc",
        precision="fp32",
    )


def test_payload_survives_json_and_expands_to_records():
    payload = json.loads(json.dumps(_payload()))
    ok, bad = list(expand(payload, "job1"))
    assert tuple(ok) == RECORD_FIELDS and tuple(bad) == RECORD_FIELDS
    assert ok["ok"] is True and ok["error"] is None
    assert ok["top_k"][0] == {"index": 281, "label": "tabby", "prob": 0.61}
    assert (ok["job"], ok["chunk"], ok["worker"], ok["device"]) == ("job1", 3, "w1@h", "cpu")
    assert bad["ok"] is False and bad["top_k"] == []
    assert bad["error"] == {"type": "FileNotFound", "message": "no such file: /b.jpg"}


def test_failed_records_cover_every_path():
    recs = failed_records(["/x", "/y"], "j", 7, ErrorType.CHUNK_FAILED, "gave up")
    assert [r["path"] for r in recs] == ["/x", "/y"]
    assert all(not r["ok"] and r["chunk"] == 7 for r in recs)
