"""Memory per image is bounded from its header, for every mode, before decoding."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from tests.images import encoded
from visionq.schema import ErrorType
from workers.errors import ImageError
from workers.preprocess import Preprocessor

pytestmark = pytest.mark.usefixtures("restore_pillow_limit")

W, H = 3000, 2000  # 6 Mpx: big enough to measure, small enough to stay fast
LIMIT = int(W * H * 1.05)  # the image is at 95% of VISIONQ_MAX_IMAGE_PIXELS


def sixteen_bit_png() -> io.BytesIO:
    """A real 16-bit greyscale PNG: a ramp over the full 0-65535 range, ~70 KB."""
    ramp = (np.arange(W * H, dtype=np.uint32) % 65536).astype(np.uint16).reshape(H, W)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    assert buf.tell() < 1 << 20
    buf.seek(0)
    return buf


def int32_tiff() -> io.BytesIO:
    return encoded(Image.new("I", (W, H), 70000), "TIFF")


def test_sixteen_bit_png_near_the_limit_converts_without_wide_temporaries():
    pre = Preprocessor(max_pixels=LIMIT)
    img = Image.open(sixteen_bit_png())
    img.load()
    assert img.mode == "I;16"
    tracemalloc.start()  # numpy reports its array buffers to tracemalloc
    try:
        rgb = pre._to_rgb(img)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Old path: uint16 copy -> int64 -> shifted int64 -> clipped int64: >= 16 bytes/px.
    assert peak <= 4.5 * W * H, f"{peak / (W * H):.1f} bytes per pixel in numpy temporaries"
    px = np.asarray(rgb)
    expected = (np.arange(W * H, dtype=np.uint32) % 65536 >> 8).astype(np.uint8).reshape(H, W)
    assert np.array_equal(px[..., 0], expected) and np.array_equal(px[..., 2], expected)


def test_sixteen_bit_png_near_the_limit_is_classified():
    pre = Preprocessor(max_pixels=LIMIT)
    tensor = pre(sixteen_bit_png(), "ramp16.png")
    assert tuple(tensor.shape) == (3, 224, 224)


def test_big_endian_sixteen_bit_keeps_the_top_byte():
    ramp = (np.arange(256 * 4, dtype=np.uint16) * 64).reshape(4, 256)
    img = Image.frombytes("I;16B", (256, 4), ramp.astype(">u2").tobytes())
    px = np.asarray(Preprocessor._to_rgb(img))[..., 0]
    assert np.array_equal(px, (ramp >> 8).astype(np.uint8))


def test_thirty_two_bit_image_within_the_pixel_limit_is_refused_from_its_header():
    pre = Preprocessor(max_pixels=LIMIT)
    full = int32_tiff()
    with pytest.raises(ImageError) as exc:
        pre.decode(full, "big32.tif")
    assert exc.value.etype == ErrorType.DECOMPRESSION_BOMB
    assert "MiB" in str(exc.value) and "VISIONQ_MAX_IMAGE_PIXELS" in str(exc.value)
    # Before decoding: the header alone is enough, the pixel data is never read.
    header_only = io.BytesIO(full.getvalue()[:4096])
    with pytest.raises(ImageError) as exc:
        pre.decode(header_only, "big32-truncated.tif")
    assert exc.value.etype == ErrorType.DECOMPRESSION_BOMB


@pytest.mark.parametrize(
    "mode", ["1", "L", "P", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I", "F"]
)
def test_every_mode_at_the_pixel_limit_fits_the_budget_or_is_refused(mode):
    """At the limit, a mode whose decoding costs more than 8-bit RGB is refused; any
    mode at a third of it decodes."""
    side = 600
    pre = Preprocessor(max_pixels=side * side)
    fmt = "TIFF" if mode in ("I", "F", "I;16", "CMYK", "YCbCr", "LA") else "PNG"
    if mode == "YCbCr":
        fmt = "JPEG"
    small, full = (Image.new(mode, (s, s)) for s in (side // 2, side))
    pre.decode(encoded(small, fmt), f"small-{mode}")
    buf = encoded(full, fmt)
    if mode in ("I", "F"):
        with pytest.raises(ImageError) as exc:
            pre.decode(buf, f"full-{mode}")
        assert exc.value.etype == ErrorType.DECOMPRESSION_BOMB
    else:
        assert pre.decode(buf, f"full-{mode}").mode == "RGB"
