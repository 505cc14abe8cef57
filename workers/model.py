"""Load ResNet-18 weights onto a device and warm it.

Weights come from ``VISIONQ_WEIGHTS``: ``imagenet`` (torchvision's IMAGENET1K_V1
file in its normal ``TORCH_HOME`` cache, hash-checked and loaded with
``weights_only=True``: see :mod:`workers.weights`), ``random`` (seeded, for smoke runs) or a
``state_dict`` file. Every result names the weights that produced it by a short id.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import torch
from torch.fx.experimental.optimization import fuse
from torchvision.models import ResNet18_Weights, resnet18

from workers import weights
from workers.device import Placement
from workers.errors import WeightsUnavailable
from workers.precision import Fp32Head, autocast

log = logging.getLogger(__name__)

IMAGENET = ResNet18_Weights.IMAGENET1K_V1
RANDOM_SEED = 0


@dataclass
class LoadedModel:
    model: torch.nn.Module
    categories: list[str]
    weights_id: str
    load_ms: float


def _imagenet() -> tuple[dict[str, torch.Tensor], str]:
    target = weights.imagenet_path()
    if not os.path.isfile(target):
        # First use on a host that can reach the network: fetch it (hash-checked,
        # written to a temporary file and moved into place). Deployments that share
        # the cache fetch it in a separate step and mount it read-only instead.
        try:
            weights.fetch(target)
        except (OSError, weights.WeightsError) as exc:  # urllib raises URLError when offline
            raise WeightsUnavailable(
                f"ImageNet weights are not cached and could not be downloaded ({exc}). "
                f"Put {weights.IMAGENET_FILE} (from {weights.IMAGENET_URL}) at {target}, "
                "or set TORCH_HOME to a folder whose hub/checkpoints/ holds it, "
                "or set VISIONQ_WEIGHTS to a state_dict file or to 'random'."
            ) from exc
    try:
        return weights.load_imagenet(target)
    except weights.WeightsError as exc:
        raise WeightsUnavailable(str(exc)) from None


def _load_state(spec: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    if spec == "random":
        return None, f"random-seed{RANDOM_SEED}"
    if spec == "imagenet":
        return _imagenet()
    path = os.path.abspath(os.path.expanduser(spec))
    if not os.path.isfile(path):
        raise WeightsUnavailable(
            f"VISIONQ_WEIGHTS={spec!r} is not 'imagenet', 'random' or an existing file ({path})"
        )
    try:
        state = weights.load_state(path)
    except weights.WeightsError as exc:
        raise WeightsUnavailable(f"cannot load state_dict from {path}: {exc}") from None
    return state, f"file-{weights.sha256(path)[:12]}"


def build(spec: str) -> tuple[torch.nn.Module, str]:
    """An eval-mode ResNet-18 on the CPU with the requested weights, and its id."""
    state, weights_id = _load_state(spec)
    if state is None:
        torch.manual_seed(RANDOM_SEED)
    model = resnet18(weights=None)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise WeightsUnavailable(f"weights {spec!r} do not fit ResNet-18: {exc}") from exc
    return model.eval(), weights_id


def load(
    spec: str,
    placement: Placement,
    *,
    batch_size: int,
    autocast_dtype: torch.dtype | None,
    int8_calibration: list[torch.Tensor] | None = None,
) -> LoadedModel:
    """Load, fold BatchNorm into the convolutions, move to the device, switch to
    channels_last and run one warm-up batch.

    With ``int8_calibration`` the model is quantized to int8 on the CPU instead.
    """
    start = time.perf_counter()
    model, weights_id = build(spec)
    if int8_calibration is not None:
        # Quantized kernels pick their own memory layout and run on the CPU only.
        from workers.quantize import quantize

        model = quantize(model, int8_calibration, batch_size=batch_size)
    else:
        # Each BatchNorm folded into the convolution before it: one pass over the
        # activations less per layer, 15-20% more images/s on one CPU thread, and
        # probabilities within ~1e-6 of the unfolded model (eval mode: the statistics
        # are constants). int8 folds them its own way while quantizing.
        model = fuse(model)
        if autocast_dtype is not None:
            model.fc = Fp32Head(model.fc)
        model = model.to(placement.device, memory_format=torch.channels_last)
    warm = torch.zeros(batch_size, 3, 224, 224, device=placement.device)
    warm = warm.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(placement, autocast_dtype):
        model(warm)
    if placement.is_cuda:
        torch.cuda.synchronize(placement.device)
    load_ms = (time.perf_counter() - start) * 1000
    return LoadedModel(model, list(IMAGENET.meta["categories"]), weights_id, load_ms)
