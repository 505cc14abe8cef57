"""Per-child state: the warm model and everything a task needs, built once after fork."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import BinaryIO

import torch

from visionq.records import ChildRecord
from visionq.settings import Settings
from workers import model, precision
from workers.device import Placement, default_batch_size, place
from workers.gpu_decode import GpuDecoder, Prepared
from workers.inference import Classifier
from workers.paths import PathPolicy
from workers.preprocess import Preprocessor, warm_up_jpeg

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    hostname: str
    placement: Placement
    classifier: Classifier
    preprocess: Preprocessor
    policy: PathPolicy
    batch_size: int
    precision: str
    weights_id: str
    load_ms: float
    gpu_decoder: GpuDecoder | None = None
    speed_check: precision.SpeedCheck | None = None

    def read(self, fh: BinaryIO, name: str) -> Prepared:
        """Decode (CPU) or read and bound-check (GPU decoding) one opened image."""
        if self.gpu_decoder is not None:
            return self.gpu_decoder.read(fh, name)
        return self.preprocess(fh, name)

    def record(self, index: int) -> ChildRecord:
        """This child's registry record (also the content of its ready line)."""
        extra: dict[str, object] = {}
        if self.speed_check is not None:
            extra["precision_requested"] = self.settings.precision
            extra["speed_check"] = self.speed_check.as_dict()
        return ChildRecord(
            pid=os.getpid(),
            index=index,
            device=self.placement.device,
            threads=self.placement.threads,
            weights=self.weights_id,
            precision=self.precision,
            batch_size=self.batch_size,
            load_ms=round(self.load_ms, 1),
            decode="gpu" if self.gpu_decoder is not None else "cpu",
            extra=extra,
        )


_current: Runtime | None = None


def current() -> Runtime:
    if _current is None:
        raise RuntimeError("this process has no model: it is not an initialised pool child")
    return _current


def start(settings: Settings, *, child_index: int, concurrency: int, hostname: str) -> Runtime:
    """Place this child, set its threads, load and warm its model."""
    global _current
    cuda_count = torch.cuda.device_count() if settings.device != "cpu" else 0
    placement = place(
        settings.device,
        child_index,
        concurrency=concurrency,
        cuda_count=cuda_count,
        cores=os.cpu_count() or 1,
        threads=settings.threads,
    )
    torch.set_num_threads(placement.threads)
    if placement.is_cuda:
        torch.cuda.set_device(placement.device)
    used_precision, dtype = precision.resolve(settings.precision, placement)
    # The reduced precision to time against fp32 once the model is loaded, if any.
    reduced = (
        precision.candidate(placement) if settings.precision == "auto" else
        (used_precision if dtype is not None else None)
    )  # fmt: skip
    batch_size = default_batch_size(placement, settings.batch_size)
    preprocess = Preprocessor(max_pixels=settings.max_image_pixels, jpeg_draft=settings.jpeg_draft)
    warm_ms = _warm_preprocess(preprocess)
    calibration = None
    if used_precision == "int8":
        from workers.quantize import calibration_tensors

        calibration = calibration_tensors(settings.int8_calibration, preprocess)
    loaded = model.load(
        settings.weights,
        placement,
        batch_size=batch_size,
        autocast_dtype=precision.dtype_of(reduced) if reduced else dtype,
        int8_calibration=calibration,
    )
    check = None
    if reduced is not None:
        check_start = time.perf_counter()
        check = precision.measure(loaded.model, placement, batch_size, reduced)
        loaded.load_ms += (time.perf_counter() - check_start) * 1000
        if settings.precision == "auto":
            used_precision, dtype = (
                (reduced, precision.dtype_of(reduced)) if not check.slower else ("fp32", None)
            )
            log.info("VISIONQ_PRECISION=auto runs %s: %s", used_precision, check.summary())
        elif check.slower:
            log.warning(
                "VISIONQ_PRECISION=%s is slower than fp32 on %s: %s; fp32 would be faster "
                "(VISIONQ_PRECISION=fp32 or auto)",
                reduced, placement.device, check.summary(),
            )  # fmt: skip
    gpu_decoder = None
    if settings.decode == "gpu":
        if placement.is_cuda:
            gpu_decoder = GpuDecoder(placement.device, preprocess)
            gpu_decoder.warm()
        else:
            log.warning("VISIONQ_DECODE=gpu but this child runs on %s; decoding on the CPU",
                        placement.device)  # fmt: skip
    _current = Runtime(
        settings=settings,
        hostname=hostname,
        placement=placement,
        classifier=Classifier(loaded.model, loaded.categories, placement, dtype),
        preprocess=preprocess,
        policy=PathPolicy(
            roots=settings.roots,
            rewrites=settings.path_rewrites,
            max_bytes=settings.max_image_bytes,
        ),
        batch_size=batch_size,
        precision=used_precision,
        weights_id=loaded.weights_id,
        load_ms=loaded.load_ms + warm_ms,
        gpu_decoder=gpu_decoder,
        speed_check=check,
    )
    return _current


def _warm_preprocess(preprocess: Preprocessor) -> float:
    # The first decode and transform pay for lazy imports and kernel set-up (~300 ms);
    # pay it here, before the child reports ready, not on a user's first image.
    start = time.perf_counter()
    preprocess(warm_up_jpeg(), "<warm-up>")
    return (time.perf_counter() - start) * 1000
