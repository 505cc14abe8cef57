"""The ImageNet weights file is never trusted: hash-checked, loaded without pickle code."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.planted import plant
from workers import weights


def test_the_pinned_url_is_torchvisions():
    from torchvision.models import ResNet18_Weights

    assert ResNet18_Weights.IMAGENET1K_V1.url == weights.IMAGENET_URL
    assert weights.published_prefix(weights.IMAGENET_FILE) == "f37072fd"


def test_cache_path_follows_torch_home(tmp_path, monkeypatch):
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert weights.imagenet_path() == str(
        Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"
    )


def test_planted_pickle_with_a_wrong_hash_is_refused_unopened(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    marker = tmp_path / "pwned"
    plant(Path(weights.imagenet_path()), marker)
    with pytest.raises(weights.WeightsError, match="does not match its published hash"):
        weights.load_imagenet()
    assert not marker.exists()


def test_planted_pickle_whose_hash_matches_still_cannot_run_code(tmp_path, monkeypatch):
    # A 32-bit name prefix can be brute-forced; weights_only=True is what stops code.
    marker = tmp_path / "pwned"
    path = plant(tmp_path / "planted.pth", marker)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(weights, "IMAGENET_FILE", f"resnet18-{digest[:8]}.pth")
    with pytest.raises(weights.WeightsError, match=r"weights_only=True"):
        weights.load_imagenet(str(path))
    assert not marker.exists()


def test_weights_id_is_derived_from_the_files_content(tmp_path, monkeypatch):
    import torch
    from torchvision.models import resnet18

    path = tmp_path / "w.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(weights, "IMAGENET_FILE", f"resnet18-{digest[:8]}.pth")
    state, weights_id = weights.load_imagenet(str(path))
    assert weights_id == f"imagenet1k_v1-{digest[:8]}"
    assert "fc.weight" in state


def test_missing_file_says_how_to_fetch_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(weights.WeightsError, match="make weights"):
        weights.load_imagenet()
