"""One chunk of paths in, one compact payload out.

Images are decoded one by one and forwarded in micro-batches of ``batch_size``. A bad
image becomes an error item and drops out of its batch; the rest of the batch is still
classified. A failure that blames the host or the device (a dead mount, a broken CUDA
context: :class:`~workers.errors.SystemicError`) fails the whole chunk instead, so it
is retried, possibly elsewhere; once its attempts run out it becomes per-image
``HostFailure`` errors. In careful mode (a chunk redelivered past ``max_attempts``) images run one
at a time with the one in flight recorded, so a culprit can be singled out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from visionq.schema import ErrorType, error_item, make_payload
from workers import metrics, sources
from workers.errors import ImageError, SystemicError, systemic_device_error, systemic_os_error
from workers.gpu_decode import Prepared
from workers.ledger import Delivery, Ledger
from workers.runtime import Runtime

log = logging.getLogger(__name__)


def run_chunk(
    rt: Runtime,
    ledger: Ledger,
    *,
    chunk: int,
    paths: Sequence[str],
    top_k: int,
    delivery: Delivery,
) -> dict[str, Any]:
    began = time.perf_counter()
    careful = delivery.attempt > rt.settings.max_attempts
    items: list[list[Any] | None] = [None] * len(paths)
    pending: list[tuple[int, Prepared, float]] = []
    batch_size = 1 if careful else rt.batch_size
    # URLs start downloading now, ahead of decode and forward; local files open in turn.
    reader = sources.Reader(rt.policy, rt.settings, paths, skip=delivery.poison)

    for i, path in enumerate(paths):
        if i in delivery.poison:
            items[i] = error_item(
                path,
                ErrorType.POISON_INPUT,
                f"killed or hung its worker on attempt {delivery.attempt - 1}; skipped",
            )
            continue
        if careful:
            ledger.mark_in_flight(chunk, i)
        start = time.perf_counter()
        try:
            with reader.open(i) as fh:
                tensor = rt.read(fh, path)
        except ImageError as exc:
            items[i] = error_item(path, exc.etype, exc.message, _ms(start))
            continue
        except SystemicError as exc:
            if not careful:
                raise  # fail the chunk: it is retried, possibly on a healthy node
            items[i] = error_item(path, exc.etype, _out_of_attempts(exc, delivery))
            continue
        except SoftTimeLimitExceeded:
            # The chunk is out of time, not this image: fail the chunk so the producer
            # re-publishes it and, past max_attempts, the in-flight image is singled out.
            raise
        except MemoryError:
            items[i] = error_item(path, ErrorType.UNSUPPORTED_IMAGE, "image too large to decode")
            continue
        except Exception as exc:  # one odd file must not fail its whole chunk
            if (systemic := systemic_os_error(exc, path)) is not None:
                if not careful:
                    raise systemic from exc
                items[i] = error_item(path, systemic.etype, _out_of_attempts(systemic, delivery))
                continue
            log.exception("unexpected error preparing %s", path)
            items[i] = error_item(
                path, ErrorType.UNSUPPORTED_IMAGE, f"{type(exc).__name__}: {exc}", _ms(start)
            )
            continue
        decode_ms = _ms(start)
        metrics.observe_decode(decode_ms / 1000)
        pending.append((i, tensor, decode_ms))
        if len(pending) >= batch_size:
            _forward(rt, pending, paths, items, top_k, delivery, careful)
            pending = []
    if pending:
        _forward(rt, pending, paths, items, top_k, delivery, careful)
    if careful:
        ledger.finish(chunk)
    for item in items:
        if item is not None:
            metrics.observe_image(item[2] is None, item[2])
    return make_payload(
        chunk=chunk,
        items=[item for item in items if item is not None],
        worker=rt.hostname,
        device=rt.placement.device,
        weights=rt.weights_id,
        precision=rt.precision,
        attempt=delivery.attempt,
        ms=_ms(began),
    )


def _forward(
    rt: Runtime,
    pending: list[tuple[int, Prepared, float]],
    paths: Sequence[str],
    items: list[list[Any] | None],
    top_k: int,
    delivery: Delivery,
    careful: bool,
) -> None:
    start = time.perf_counter()
    try:
        if rt.gpu_decoder is not None:
            # Device decoding happens here, for the whole batch at once; its time counts
            # as forward time, and a device that fails during it fails like a forward.
            ready = []
            for (i, _, decode_ms), tensor in zip(
                pending, rt.gpu_decoder.materialize([t for _, t, _ in pending]), strict=True
            ):
                if isinstance(tensor, ImageError):
                    items[i] = error_item(paths[i], tensor.etype, tensor.message, decode_ms)
                else:
                    ready.append((i, tensor, decode_ms))
            pending = ready
            if not pending:
                return
        tops = rt.classifier([t for _, t, _ in pending], top_k)  # type: ignore[misc]
    except RuntimeError as exc:
        if (systemic := systemic_device_error(exc)) is not None:
            log.error("device failure on %s: %s", rt.placement.device, exc)
            if not careful:
                raise systemic from exc
            etype, message = systemic.etype, _out_of_attempts(systemic, delivery)
        else:  # e.g. CUDA out of memory: fail these images, keep serving
            log.exception("forward pass failed for %d images", len(pending))
            etype, message = ErrorType.INFERENCE_ERROR, str(exc)
        for i, _, decode_ms in pending:
            items[i] = error_item(paths[i], etype, message, decode_ms)
        return
    forward_ms = _ms(start)
    metrics.observe_batch(len(pending), forward_ms / 1000)
    per_image = forward_ms / len(pending)
    for (i, _, decode_ms), top in zip(pending, tops, strict=False):
        items[i] = [paths[i], top, None, None, round(decode_ms, 2), round(per_image, 2)]


def _out_of_attempts(exc: SystemicError, delivery: Delivery) -> str:
    return f"{exc.message}; the host or device failed on all {delivery.attempt} attempts"


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000
