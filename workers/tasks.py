"""The task the producer publishes: classify one chunk of image paths."""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import Ignore

from visionq.protocol import TASK_NAME, InvalidJobId, validate_job_id
from workers import app, registry

log = logging.getLogger(__name__)


@app.task(name=TASK_NAME, bind=True)
def classify(
    self: Any, job_id: str, chunk: int, paths: list[str], top_k: int = 5
) -> dict[str, Any]:
    # Imported here, not at module level: they import torch, which must only ever load
    # in pool children, after the fork: a forked OpenMP pool deadlocks.
    from workers import pipeline, runtime
    from workers.ledger import Ledger

    try:
        validate_job_id(job_id)  # it names Redis keys: never let a task pick arbitrary ones
    except InvalidJobId as exc:
        log.error("refusing a task of an invalid job: %s", exc)
        raise Ignore() from None
    rt = runtime.current()
    registry.refresh(self.backend.client)
    ledger = Ledger(self.backend.client, job_id, rt.settings.result_expires)
    delivery = ledger.begin(chunk, careful_after=rt.settings.max_attempts)
    if delivery.done:
        # A redelivery of a chunk the producer already wrote, or of a cancelled job.
        # Ignore acks the message and stores no result, so no stray key is left.
        log.info("job %s chunk %d already collected or cancelled; skipping", job_id, chunk)
        raise Ignore()
    return pipeline.run_chunk(
        rt, ledger, chunk=chunk, paths=paths, top_k=int(top_k), delivery=delivery
    )
