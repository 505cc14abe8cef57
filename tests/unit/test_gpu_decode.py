"""VISIONQ_DECODE=gpu's reader and batch decoder, run on the CPU device.

torchvision's ``decode_jpeg`` takes the same batched call on the CPU, so the plumbing
(what takes the fast path, what falls back, how errors come out) is checked here; the
device itself is measured by ``make bench-gpu``.
"""

from __future__ import annotations

import io

import pytest
import torch

from tests.images import SAMPLES, encoded, photo
from visionq.schema import ErrorType
from workers.errors import ImageError
from workers.gpu_decode import Encoded, GpuDecoder
from workers.preprocess import Preprocessor

pytestmark = pytest.mark.usefixtures("restore_pillow_limit")

PRE = Preprocessor(max_pixels=89_478_485)


def test_jpegs_take_the_batch_path_and_match_the_exact_path_closely():
    dec = GpuDecoder("cpu", PRE)
    names = sorted(p.name for p in SAMPLES.glob("*.jpg"))
    read = [dec.read(io.BytesIO((SAMPLES / n).read_bytes()), n) for n in names]
    assert all(isinstance(r, Encoded) for r in read)
    out = dec.materialize(read)
    for name, tensor in zip(names, out, strict=True):
        assert isinstance(tensor, torch.Tensor) and tensor.shape == (3, 224, 224)
        exact = PRE(io.BytesIO((SAMPLES / name).read_bytes()), name)
        # Same preset, another decoder and resize: close, not bit-exact.
        assert (tensor - exact).abs().mean() < 0.05, name


def test_other_formats_decode_on_the_cpu_exactly():
    dec = GpuDecoder("cpu", PRE)
    png = encoded(photo(), "PNG")
    got = dec.read(png, "cat.png")
    assert isinstance(got, torch.Tensor)
    png.seek(0)
    assert torch.equal(got, PRE(png, "cat.png"))
    (out,) = dec.materialize([got])
    assert torch.equal(out, got)


def test_bounds_apply_before_any_pixel_is_decoded():
    dec = GpuDecoder("cpu", Preprocessor(max_pixels=10_000))
    with pytest.raises(ImageError) as err:
        dec.read(encoded(photo(), "JPEG"), "big.jpg")
    assert err.value.etype == ErrorType.DECOMPRESSION_BOMB


def test_a_corrupt_jpeg_in_a_batch_costs_only_itself():
    dec = GpuDecoder("cpu", PRE)
    good = encoded(photo(), "JPEG").getvalue()
    # A valid header and a body of garbage: the header check passes, decoding fails.
    bad = good[:600] + bytes(range(256)) * 40
    items = [
        dec.read(io.BytesIO(b), n) for b, n in ((good, "a.jpg"), (bad, "b.jpg"), (good, "c.jpg"))
    ]
    out = dec.materialize(items)
    assert isinstance(out[0], torch.Tensor) and isinstance(out[2], torch.Tensor)
    assert torch.equal(out[0], out[2])
    # libjpeg may still return a (grey-padded) image for a damaged body; either way the
    # neighbours are unharmed and nothing raises.
    assert isinstance(out[1], torch.Tensor | ImageError)


def test_cmyk_jpegs_fall_back_to_the_cpu_path():
    dec = GpuDecoder("cpu", PRE)
    got = dec.read(encoded(photo().convert("CMYK"), "JPEG"), "cmyk.jpg")
    assert isinstance(got, torch.Tensor) and got.shape == (3, 224, 224)
