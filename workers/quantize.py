"""Opt-in int8 (``VISIONQ_PRECISION=int8``): post-training static quantization for x86.

FX graph mode quantization with the ``x86`` backend (oneDNN/FBGEMM, VNNI where the CPU
has it), calibrated on a folder of the user's own images. On ResNet-18 it runs the
forward pass about 4x faster than fp32 on one core; decoding then becomes the limit.
Accuracy depends on the weights and on how well the calibration images represent the
job, so it stays opt-in and every result says ``"precision": "int8"``.
"""

from __future__ import annotations

import logging
import os
import warnings

import torch

from workers.errors import WeightsUnavailable
from workers.preprocess import Preprocessor

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 64
_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def calibration_tensors(folder: str, preprocess: Preprocessor) -> list[torch.Tensor]:
    """Up to CALIBRATION_IMAGES preprocessed images from ``folder``, in name order."""
    if not folder:
        raise WeightsUnavailable(
            "VISIONQ_PRECISION=int8 needs VISIONQ_INT8_CALIBRATION: a folder of images "
            "like the job's, to calibrate the quantized model"
        )
    try:
        names = sorted(n for n in os.listdir(folder) if n.lower().endswith(_SUFFIXES))
    except OSError as exc:
        raise WeightsUnavailable(f"VISIONQ_INT8_CALIBRATION={folder!r}: {exc}") from exc
    tensors = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as fh:
                tensors.append(preprocess(fh, path))
        except Exception as exc:  # a bad calibration file is skipped, not fatal
            log.warning("skipping calibration image %s: %s", path, exc)
        if len(tensors) == CALIBRATION_IMAGES:
            break
    if not tensors:
        raise WeightsUnavailable(f"VISIONQ_INT8_CALIBRATION={folder!r} holds no usable image")
    return tensors


def quantize(model: torch.nn.Module, calibration: list[torch.Tensor], batch_size: int = 8
             ) -> torch.nn.Module:  # fmt: skip
    """An int8 copy of the eval-mode fp32 ``model``, calibrated on ``calibration``."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    example = (calibration[0].unsqueeze(0),)
    with warnings.catch_warnings():
        # torch.ao's FX API announces its move to torchao; it still works in the pinned
        # torch, and one warning per child start would only be noise.
        warnings.simplefilter("ignore")
        prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), example_inputs=example)
        with torch.inference_mode():
            for i in range(0, len(calibration), batch_size):
                prepared(torch.stack(calibration[i : i + batch_size]))
        return convert_fx(prepared)
