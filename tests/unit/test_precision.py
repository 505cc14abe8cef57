from __future__ import annotations

import pytest
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


def test_int8_is_cpu_only():
    assert resolve("int8", CPU) == ("int8", None)
    assert resolve("int8", GPU) == ("fp32", None)


def test_int8_quantized_model_tracks_fp32(tmp_path):
    from PIL import Image

    from tests.images import SAMPLES
    from workers.errors import WeightsUnavailable
    from workers.model import build
    from workers.preprocess import Preprocessor
    from workers.quantize import calibration_tensors, quantize

    pre = Preprocessor(max_pixels=89_478_485)
    with pytest.raises(WeightsUnavailable, match="VISIONQ_INT8_CALIBRATION"):
        calibration_tensors("", pre)
    (tmp_path / "notes.txt").write_text("skipped: not an image name")
    (tmp_path / "broken.jpg").write_bytes(b"skipped: not an image")
    for p in SAMPLES.glob("*.jpg"):
        img = Image.open(p).convert("RGB")
        img.save(tmp_path / p.name)
        img.transpose(Image.FLIP_LEFT_RIGHT).save(tmp_path / f"flip-{p.name}")
    calib = calibration_tensors(str(tmp_path), pre)
    assert len(calib) == 10
    fp32, _ = build("random")
    x = torch.stack(calib)
    with torch.inference_mode():
        ref = fp32(x).softmax(1)
        q = quantize(build("random")[0], calib)(x).softmax(1)
    assert q.shape == ref.shape and q.dtype == torch.float32
    assert (q - ref).abs().max() < 0.05


def test_auto_starts_at_fp32_and_weighs_the_device_reduced_precision():
    from workers.precision import candidate

    assert resolve("auto", CPU) == ("fp32", None)
    assert candidate(GPU) == "fp16"
    assert candidate(CPU, cpu_bf16=True) == "bf16"
    assert candidate(CPU, cpu_bf16=False) is None


def test_speed_check_times_both_precisions_on_the_model():
    from workers.precision import measure

    calls: list[torch.dtype] = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu")
                         else torch.float32)  # fmt: skip
            return x.sum()

    check = measure(Probe(), CPU, 2, "bf16", passes=2)
    assert calls == [torch.float32] * 3 + [torch.bfloat16] * 3
    assert check.reduced == "bf16" and check.fp32_img_s > 0 and check.reduced_img_s > 0
    assert check.as_dict()["reduced"] == "bf16"
    assert ("slower" in check.summary()) is False  # summary states figures, not a verdict
    assert check.slower == (check.reduced_img_s < check.fp32_img_s)
