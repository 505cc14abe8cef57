"""Map ``VISIONQ_PRECISION`` to an autocast dtype for a child's device."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

import torch

from workers.device import Placement

log = logging.getLogger(__name__)

PASSES = 3  # timed forward passes per precision in a start-up speed check


def cpu_supports_bf16() -> bool:
    # oneDNN reports whether this CPU has native bf16 (AVX-512 BF16 or AMX); without it
    # autocast still works but emulates bf16 and runs slower than fp32.
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve(
    precision: str, placement: Placement, *, cpu_bf16: bool | None = None
) -> tuple[str, torch.dtype | None]:
    """The precision actually used, and the autocast dtype (None means plain fp32)."""
    if precision == "fp32":
        return "fp32", None
    if precision == "bf16":
        if placement.is_cuda:
            return "bf16", torch.bfloat16
        if cpu_bf16 if cpu_bf16 is not None else cpu_supports_bf16():
            return "bf16", torch.bfloat16
        log.warning("VISIONQ_PRECISION=bf16 but this CPU lacks native bf16; using fp32")
        return "fp32", None
    if precision == "int8":
        if not placement.is_cuda:
            return "int8", None  # quantized kernels, no autocast
        log.warning("VISIONQ_PRECISION=int8 runs on the CPU only; using fp32 on %s",
                    placement.device)  # fmt: skip
        return "fp32", None
    if precision == "fp16":
        if placement.is_cuda:
            return "fp16", torch.float16
        log.warning("VISIONQ_PRECISION=fp16 needs CUDA; using fp32 on %s", placement.device)
        return "fp32", None
    if precision == "auto":
        # Decided after the model is loaded, by measure(); fp32 until then.
        return "fp32", None
    raise ValueError(f"unknown precision {precision!r}; expected fp32, bf16, fp16, int8 or auto")


def autocast(placement: Placement, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda" if placement.is_cuda else "cpu", dtype=dtype)


class Fp32Head(torch.nn.Module):
    """Runs the wrapped classifier head in fp32 under an autocast forward.

    With bf16 autocast the final linear layer's logits are rounded to bf16 (8 bits of
    mantissa), so near-equal classes become exact ties and top-1 flips to the lower
    index. Computing the head (0.5 MFLOP of the 1.8 GFLOP) in fp32 removes those ties.
    """

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.head(x.float())


@dataclass(frozen=True)
class SpeedCheck:
    """Forward-pass speed of fp32 and of a reduced precision, measured on this child."""

    reduced: str  # "bf16" or "fp16"
    fp32_img_s: float
    reduced_img_s: float

    @property
    def ratio(self) -> float:
        return self.reduced_img_s / self.fp32_img_s if self.fp32_img_s else 0.0

    @property
    def slower(self) -> bool:
        return self.reduced_img_s < self.fp32_img_s

    def summary(self) -> str:
        return (
            f"{self.reduced} {self.reduced_img_s:.1f} img/s vs fp32 {self.fp32_img_s:.1f} img/s "
            f"({self.ratio:.2f}x)"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "reduced": self.reduced,
            "fp32_img_s": round(self.fp32_img_s, 1),
            "reduced_img_s": round(self.reduced_img_s, 1),
        }


def candidate(placement: Placement, *, cpu_bf16: bool | None = None) -> str | None:
    """The reduced precision ``auto`` weighs against fp32 here; None when there is none."""
    if placement.is_cuda:
        return "fp16"
    if cpu_bf16 if cpu_bf16 is not None else cpu_supports_bf16():
        return "bf16"
    return None


def dtype_of(name: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[name]


def measure(
    model: torch.nn.Module,
    placement: Placement,
    batch_size: int,
    reduced: str,
    *,
    passes: int = PASSES,
) -> SpeedCheck:
    """Time ``passes`` forward passes at fp32 and at ``reduced`` after one warm pass each.

    The best pass of each counts: on a shared host the slowest passes measure the
    neighbours, not the precision. A few batches cost ~1-3 s of start-up on a CPU.
    """
    x = torch.zeros(batch_size, 3, 224, 224, device=placement.device)
    x = x.contiguous(memory_format=torch.channels_last)
    rates = {}
    for name, dtype in (("fp32", None), (reduced, dtype_of(reduced))):
        best = float("inf")
        with torch.inference_mode(), autocast(placement, dtype):
            for i in range(passes + 1):
                start = time.perf_counter()
                model(x)
                if placement.is_cuda:
                    torch.cuda.synchronize(placement.device)
                if i:  # the first pass of each precision pays its kernel set-up
                    best = min(best, time.perf_counter() - start)
        rates[name] = batch_size / best
    return SpeedCheck(reduced, rates["fp32"], rates[reduced])
