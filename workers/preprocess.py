"""Decode an image file and apply torchvision's ImageNet eval preset.

The transform is exactly ``ResNet18_Weights.IMAGENET1K_V1.transforms()`` (resize the
short side to 256, centre-crop 224, normalize) applied to
``PIL.Image.open(path).convert("RGB")``, so results match an in-process reference.
"""

from __future__ import annotations

import io
import warnings
from typing import BinaryIO

import numpy as np
import torch
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image, ImageMode, UnidentifiedImageError
from torchvision.models import ResNet18_Weights

from visionq.schema import ErrorType
from workers.errors import ImageError, systemic_os_error

# Decoders we accept; anything else is refused before a plugin parses it.
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
RESIZE = 256
# Resizing the short side to 256 makes a 1:N strip 256*N wide; past this ratio the
# intermediate image alone would take gigabytes, so such inputs are refused.
MAX_ASPECT = 64.0
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# Pillow frees every decoded image's memory at once and allocates it again for the next
# (36-48 MB for a 12 MP photo), paying fresh page faults each time. Keeping a few 16 MB
# blocks for reuse cut a 12 MP decode + resize by ~17% of CPU time; at most this many
# blocks (64 MB) stay cached per process.
_PILLOW_BLOCKS_CACHED = 4

# Memory per image is bounded from its header, before decoding, for every mode: at most
# what an 8-bit RGB image at the pixel limit costs (decoded, 4 bytes per pixel in
# Pillow, plus its RGB copy, 4 more). Pixels alone do not bound it: a 16-bit PNG of
# ~240 KB at the limit once cost ~1.7 GiB in _to_rgb through int64 arrays.
BUDGET_BYTES_PER_PIXEL = 8
RGB_BYTES = 4  # Pillow stores RGB as 4 bytes per pixel


def warm_up_jpeg() -> io.BytesIO:
    """A small grey JPEG for a child's first decode, before it reports ready."""
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (127, 127, 127)).save(buf, "JPEG")
    buf.seek(0)
    return buf


def _stored_bytes(mode: str) -> int:
    """Bytes per pixel Pillow allocates for ``mode``: multi-band images use 4-byte
    pixels; single-band ones their sample size (1 for 1/L/P, 2 for I;16, 4 for I/F)."""
    info = ImageMode.getmode(mode)
    return RGB_BYTES if len(info.bands) > 1 else max(1, int(info.typestr[-1]))


def peak_bytes_per_pixel(mode: str) -> int:
    """Peak bytes per pixel from decoding an image of ``mode`` to RGB (see _to_rgb)."""
    stored = _stored_bytes(mode)
    if mode in _SIXTEEN_BIT or mode == "F":
        # Beside the decoded image: numpy's copy goes through Pillow's tobytes() (two
        # copies for a moment), then the copy and its 8-bit version, then the 8-bit
        # version and the RGB image. "F" is counted alike: Pillow takes it to RGB
        # through an intermediate image too.
        return stored + max(2 * stored, stored + 1, 1 + RGB_BYTES)
    return stored + RGB_BYTES


class Preprocessor:
    """Path-independent decode + eval transform; one per pool child."""

    def __init__(self, *, max_pixels: int, jpeg_draft: bool = False) -> None:
        self.max_pixels = max_pixels
        self.jpeg_draft = jpeg_draft
        self.transform = ResNet18_Weights.IMAGENET1K_V1.transforms()
        if Image.core.get_blocks_max() < _PILLOW_BLOCKS_CACHED:
            Image.core.set_blocks_max(_PILLOW_BLOCKS_CACHED)

    def decode(self, fh: BinaryIO, name: str) -> Image.Image:
        # Pillow only warns between 1x and 2x the pixel limit; the warning is made an
        # error so every bomb is refused, not just the worst ones.
        Image.MAX_IMAGE_PIXELS = self.max_pixels
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fh, formats=FORMATS)
                w, h = img.size
                if min(w, h) < 1 or max(w, h) / min(w, h) > MAX_ASPECT:
                    raise ImageError(
                        ErrorType.UNSUPPORTED_IMAGE,
                        f"{name} is {w}x{h}; aspect ratios beyond {MAX_ASPECT:g}:1 are refused",
                    )
                if self.jpeg_draft and img.format == "JPEG":
                    img.draft("RGB", (RESIZE, RESIZE))
                self._check_memory(img, name)
                img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(ErrorType.DECOMPRESSION_BOMB, f"{name}: {exc}") from None
        except UnidentifiedImageError:
            raise ImageError(ErrorType.UNREADABLE_IMAGE, f"{name} is not an image") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            if (systemic := systemic_os_error(exc, name)) is not None:
                raise systemic from None
            raise ImageError(ErrorType.UNREADABLE_IMAGE, f"{name}: {exc}") from None
        except (ImageError, SoftTimeLimitExceeded):
            raise
        except Exception as exc:
            # A decoder bug on one hostile file must cost that file, not its whole chunk.
            raise ImageError(
                ErrorType.UNREADABLE_IMAGE, f"{name}: {type(exc).__name__}: {exc}"
            ) from None
        if img.mode == "RGB":
            # convert("RGB") of an RGB image is a full copy (48 MB for 12 MP); skip it.
            return img
        try:
            return self._to_rgb(img)
        except MemoryError:
            raise ImageError(ErrorType.UNSUPPORTED_IMAGE, f"{name}: too large to convert") from None

    def _check_memory(self, img: Image.Image, name: str) -> None:
        """Refuse, from the header alone, an image whose decoding would cost more than
        an 8-bit RGB image at the pixel limit."""
        w, h = img.size
        try:
            per_pixel = peak_bytes_per_pixel(img.mode)
        except KeyError:
            raise ImageError(
                ErrorType.UNSUPPORTED_IMAGE, f"{name}: unsupported mode {img.mode}"
            ) from None
        need, budget = w * h * per_pixel, self.max_pixels * BUDGET_BYTES_PER_PIXEL
        if need > budget:
            raise ImageError(
                ErrorType.DECOMPRESSION_BOMB,
                f"{name} is {w}x{h} {img.mode}: decoding it takes ~{need >> 20} MiB, "
                f"over the {budget >> 20} MiB per image that VISIONQ_MAX_IMAGE_PIXELS allows",
            )

    @staticmethod
    def _to_rgb(img: Image.Image) -> Image.Image:
        if img.mode in _SIXTEEN_BIT:
            # convert("RGB") would clip 16-bit samples at 255 (a white image); keep the
            # top 8 bits instead. Every step stays in the samples' own width, in place
            # (never int64: 4x the memory of a 16-bit image, per temporary). Mode "I" is
            # signed 32-bit: clipped first, so a hostile file's out-of-range samples
            # saturate instead of wrapping around.
            arr = np.array(img)  # a writable copy, same dtype
            if img.mode == "I":
                np.clip(arr, 0, 65535, out=arr)
            arr >>= 8
            small = arr.astype(np.uint8)
            del arr
            img = Image.fromarray(small)
        return img.convert("RGB")

    def __call__(self, fh: BinaryIO, name: str) -> torch.Tensor:
        return self.transform(self.decode(fh, name))
