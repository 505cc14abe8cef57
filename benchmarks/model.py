"""The one ResNet-18 every contender runs, and its standard eval preprocessing."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image
from torchvision.models import ResNet18_Weights, resnet18

SEED = 0


def ensure_weights(path: Path, seed: int = SEED) -> Path:
    """Save a seeded random-init state_dict once, so all contenders load identical weights.

    ImageNet weights cannot be downloaded on every machine that runs the benchmarks; random
    weights cost exactly the same FLOPs.
    """
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    state = resnet18(weights=None).state_dict()
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_model(path: Path) -> torch.nn.Module:
    model = resnet18(weights=None)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def preprocess() -> torch.nn.Module:
    """Resize(256) + CenterCrop(224) + ImageNet normalisation; needs no download."""
    return ResNet18_Weights.IMAGENET1K_V1.transforms()


def decode(path: str | Path, transform: torch.nn.Module) -> torch.Tensor:
    with Image.open(path) as im:
        return transform(im.convert("RGB"))
