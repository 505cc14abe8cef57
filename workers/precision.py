"""Map ``VISIONQ_PRECISION`` to an autocast dtype for a child's device."""

from __future__ import annotations

import contextlib
import logging

import torch

from workers.device import Placement

log = logging.getLogger(__name__)


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
    raise ValueError(f"unknown precision {precision!r}; expected fp32, bf16, fp16 or int8")


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
