from __future__ import annotations

import torch

from workers.device import Placement
from workers.precision import resolve

CPU, GPU = Placement("cpu", 1), Placement("cuda:0", 1)


def test_fp32_is_plain():
    assert resolve("fp32", CPU) == ("fp32", None)
    assert resolve("fp32", GPU) == ("fp32", None)


def test_bf16_needs_native_support_on_cpu():
    assert resolve("bf16", CPU, cpu_bf16=True) == ("bf16", torch.bfloat16)
    assert resolve("bf16", CPU, cpu_bf16=False) == ("fp32", None)
    assert resolve("bf16", GPU) == ("bf16", torch.bfloat16)


def test_fp16_only_on_cuda():
    assert resolve("fp16", GPU) == ("fp16", torch.float16)
    assert resolve("fp16", CPU) == ("fp32", None)


def test_fp32_head_keeps_logits_fp32_under_autocast():
    from workers.precision import Fp32Head

    head = torch.nn.Linear(16, 1000)
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = head(x)
        wrapped = Fp32Head(head)(x)
    assert plain.dtype == torch.bfloat16
    assert wrapped.dtype == torch.float32
    assert torch.allclose(wrapped, head(x), atol=1e-6)
