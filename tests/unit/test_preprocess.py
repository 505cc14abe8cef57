"""Preprocessing parity with torchvision's preset, and per-image errors for bad files."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import ResNet18_Weights

from tests.images import SAMPLES, encoded, photo
from visionq.schema import ErrorType
from workers.errors import ImageError
from workers.preprocess import Preprocessor

pytestmark = pytest.mark.usefixtures("restore_pillow_limit")

PRE = Preprocessor(max_pixels=89_478_485)
PRESET = ResNet18_Weights.IMAGENET1K_V1.transforms()


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.jpg")))
def test_identical_to_torchvision_preset(name):
    path = SAMPLES / name
    ours = PRE(io.BytesIO(path.read_bytes()), name)
    ref = PRESET(Image.open(path).convert("RGB"))
    assert ours.shape == (3, 224, 224)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P"])
def test_modes_convert_like_the_reference(mode):
    img = photo().convert(mode)
    fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    ours = PRE(encoded(img, fmt), "x")
    ref = PRESET(Image.open(encoded(img, fmt)).convert("RGB"))
    assert torch.equal(ours, ref)


def test_sixteen_bit_keeps_its_contrast():
    arr = (np.linspace(0, 65535, 300 * 300).reshape(300, 300)).astype(np.uint16)
    t = PRE(encoded(Image.fromarray(arr), "PNG"), "x")
    assert t.std() > 0.5  # clipping at 255 would make it nearly uniform


def _etype(fh: io.BytesIO, pre: Preprocessor = PRE) -> str:
    with pytest.raises(ImageError) as info:
        pre(fh, "x")
    return info.value.etype


def test_bad_inputs_raise_image_errors():
    jpeg = encoded(photo(), "JPEG").getvalue()
    assert _etype(io.BytesIO(jpeg[: len(jpeg) // 2])) == ErrorType.UNREADABLE_IMAGE
    assert _etype(io.BytesIO(b"plain text, not an image")) == ErrorType.UNREADABLE_IMAGE
    strip = Image.new("RGB", (6500, 100))
    assert _etype(encoded(strip, "PNG")) == ErrorType.UNSUPPORTED_IMAGE
    # Over the pixel limit, even below Pillow's 2x hard error, is a decompression bomb.
    small_limit = Preprocessor(max_pixels=100 * 100)
    assert _etype(encoded(Image.new("L", (150, 150)), "PNG"), small_limit) == (
        ErrorType.DECOMPRESSION_BOMB
    )


def test_animated_gif_uses_first_frame():
    base = photo()
    frames = [base, base.rotate(180)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    buf.seek(0)
    ours = PRE(buf, "x")
    buf.seek(0)
    assert torch.equal(ours, PRESET(Image.open(buf).convert("RGB")))
