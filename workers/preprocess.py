"""Decode an image file and apply torchvision's ImageNet eval preset.

The transform is exactly ``ResNet18_Weights.IMAGENET1K_V1.transforms()`` (resize the
short side to 256, centre-crop 224, normalize) applied to
``PIL.Image.open(path).convert("RGB")``, so results match an in-process reference.
"""

from __future__ import annotations

import warnings
from typing import BinaryIO

import numpy as np
import torch
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image, UnidentifiedImageError
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

    @staticmethod
    def _to_rgb(img: Image.Image) -> Image.Image:
        if img.mode in _SIXTEEN_BIT:
            # convert("RGB") would clip 16-bit samples at 255 (a white image); keep the
            # top 8 bits instead. Mode "I" is signed 32-bit: clip, so a hostile file's
            # out-of-range samples saturate instead of wrapping around.
            arr = np.clip(np.asarray(img).astype(np.int64) >> 8, 0, 255)
            img = Image.fromarray(arr.astype(np.uint8))
        return img.convert("RGB")

    def __call__(self, fh: BinaryIO, name: str) -> torch.Tensor:
        return self.transform(self.decode(fh, name))
