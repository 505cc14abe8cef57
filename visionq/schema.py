"""The result contract, defined once for both sides.

Workers return one compact *chunk payload* per task (a list of per-image tuples, so
the result backend stores little). The producer expands it into one *record* per
image, the line users read in JSONL or CSV:

    {"path": "/abs/a.jpg", "ok": true,
     "top_k": [{"index": 281, "label": "tabby", "prob": 0.61}, ...], "error": null,
     "job": "...", "chunk": 0, "worker": "celery@host", "device": "cpu",
     "weights": "imagenet1k_v1-f37072fd", "precision": "fp32",
     "decode_ms": 4.1, "infer_ms": 21.7}
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, TypedDict

PAYLOAD_VERSION = 1
PROB_DIGITS = 6  # rounding keeps payloads small; 5e-7 is far inside the 1e-4 parity bound

RECORD_FIELDS = (
    "path", "ok", "top_k", "error", "job", "chunk", "worker", "device",
    "weights", "precision", "decode_ms", "infer_ms",
)  # fmt: skip


class ErrorType:
    """Values of ``record["error"]["type"]``."""

    FILE_NOT_FOUND = "FileNotFound"
    NOT_A_FILE = "NotAFile"  # folder, FIFO, device file, socket
    PERMISSION_DENIED = "PermissionDenied"
    INVALID_PATH = "InvalidPath"  # NUL bytes, not absolute, undecodable
    PATH_NOT_ALLOWED = "PathNotAllowed"  # outside VISIONQ_ALLOWED_ROOTS after realpath
    FILE_TOO_LARGE = "FileTooLarge"  # over VISIONQ_MAX_IMAGE_BYTES
    DECOMPRESSION_BOMB = "DecompressionBomb"  # over VISIONQ_MAX_IMAGE_PIXELS
    UNREADABLE_IMAGE = "UnreadableImage"  # empty, truncated, not an image
    UNSUPPORTED_IMAGE = "UnsupportedImage"  # decodes, but cannot be classified sanely
    POISON_INPUT = "PoisonInput"  # killed or hung its worker on every attempt
    INFERENCE_ERROR = "InferenceError"
    CHUNK_FAILED = "ChunkFailed"  # the chunk failed more often than the producer retries
    HOST_FAILURE = "HostFailure"  # storage or device broken on every attempt (EIO, CUDA)
    FETCH_FAILED = "FetchFailed"  # URL: timeouts, 5xx or refused connections after retries
    UNSUPPORTED_SOURCE = "UnsupportedSource"  # URL scheme refused, or its extra not installed


class TopK(TypedDict):
    index: int
    label: str
    prob: float


# One image in a chunk payload: (path, top_k or None, error type, error message,
# decode_ms, infer_ms). top_k entries are (index, label, prob).
Item = tuple[str, "list[tuple[int, str, float]] | None", "str | None", "str | None", float, float]


def make_payload(
    *,
    chunk: int,
    items: Sequence[Sequence[Any]],
    worker: str,
    device: str,
    weights: str,
    precision: str,
    attempt: int = 1,
    ms: float = 0.0,
) -> dict[str, Any]:
    """A chunk's compact result. ``ms`` is the worker's wall time for the whole chunk,
    which the producer uses to size later chunks."""
    return {
        "v": PAYLOAD_VERSION,
        "chunk": chunk,
        "worker": worker,
        "device": device,
        "weights": weights,
        "precision": precision,
        "attempt": attempt,
        "ms": round(ms, 1),
        "items": [list(item) for item in items],
    }


def error_item(path: str, etype: str, message: str, decode_ms: float = 0.0) -> list[Any]:
    return [path, None, etype, message, round(decode_ms, 2), 0.0]


def expand(payload: dict[str, Any], job_id: str) -> Iterator[dict[str, Any]]:
    """Per-image records from one chunk payload."""
    common = {
        "job": job_id,
        "chunk": payload["chunk"],
        "worker": payload.get("worker"),
        "device": payload.get("device"),
        "weights": payload.get("weights"),
        "precision": payload.get("precision"),
    }
    for path, top_k, etype, message, decode_ms, infer_ms in payload["items"]:
        ok = etype is None
        yield {
            "path": path,
            "ok": ok,
            "top_k": [{"index": i, "label": lab, "prob": p} for i, lab, p in top_k or ()],
            "error": None if ok else {"type": etype, "message": message},
            **common,
            "decode_ms": decode_ms,
            "infer_ms": infer_ms,
        }


def failed_records(
    paths: Sequence[str], job_id: str, chunk: int, etype: str, message: str
) -> list[dict[str, Any]]:
    """Error records for a whole chunk the producer gave up on, so nothing goes missing."""
    payload = make_payload(
        chunk=chunk,
        items=[error_item(p, etype, message) for p in paths],
        worker="",
        device="",
        weights="",
        precision="",
    )
    return list(expand(payload, job_id))


# One encoder for every record: json.dumps with options builds a new one per call, which
# costs a third of the time on jobs of millions of records.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps(record: dict[str, Any]) -> str:
    """One record as one compact JSON line (without the newline)."""
    return _ENCODER.encode(record)
