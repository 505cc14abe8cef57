"""``VISIONQ_DECODE=gpu``: JPEGs decoded in batches on the child's CUDA device.

CPU JPEG decoding gives a few hundred images per second per core, far below what one
GPU classifies, so a GPU child that decodes on its CPU core starves its device. Here the
child only reads the file and parses its header on the CPU (the size and aspect bounds
of :class:`~workers.preprocess.Preprocessor` apply before any pixel is decoded); the
bytes of a whole batch go to nvJPEG in one ``torchvision.io.decode_jpeg`` call, and the
resize, crop and normalisation run on the device.

Anything the fast path does not take (not a JPEG, a header Pillow refuses, a bound
exceeded, a JPEG nvJPEG cannot decode, such as CMYK) goes through the CPU preprocessor,
which gives it the same result or the same per-image error as ``VISIONQ_DECODE=cpu``.
The device resize is antialiased bilinear like Pillow's, but not bit-exact with it, so
top-1 agreement with the exact path is measured, not assumed (``make bench-gpu``).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from workers.errors import ImageError
from workers.preprocess import MAX_ASPECT, RESIZE, Preprocessor, warm_up_jpeg

log = logging.getLogger(__name__)

_JPEG_MAGIC = b"\xff\xd8\xff"
# Modes nvJPEG decodes to RGB; CMYK and YCCK JPEGs take the CPU path.
_GPU_MODES = ("RGB", "L")


@dataclass
class Encoded:
    """A JPEG's bytes, read and bound-checked, waiting for its batch's device decode."""

    data: torch.Tensor  # 1-D uint8, on the CPU
    name: str


Prepared = torch.Tensor | Encoded


class GpuDecoder:
    """Reads images for a CUDA child; :meth:`materialize` decodes a batch on the device."""

    def __init__(self, device: str, fallback: Preprocessor) -> None:
        self.device = torch.device(device)
        self.fallback = fallback
        # The CPU path's own eval transform gives crop and normalisation, so the two
        # paths cannot drift apart.
        t = fallback.transform
        self.crop = list(t.crop_size)
        self.mean = torch.tensor(t.mean, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(t.std, device=self.device).view(3, 1, 1)

    def read(self, fh: BinaryIO, name: str) -> Prepared:
        """Bytes of a JPEG that may decode on the device, else the CPU-preprocessed tensor.

        Raises :class:`ImageError` exactly where the CPU path would.
        """
        if fh.read(3) != _JPEG_MAGIC or not self._fits(fh):
            fh.seek(0)
            return self.fallback(fh, name)
        fh.seek(0)
        raw = fh.read()
        return Encoded(torch.frombuffer(bytearray(raw), dtype=torch.uint8), name)

    def _fits(self, fh: BinaryIO) -> bool:
        # Header only: Pillow reads the SOF marker without decoding pixels. Any doubt
        # sends the file to the CPU path, which owns the error messages.
        fh.seek(0)
        try:
            with Image.open(fh, formats=("JPEG",)) as img:
                w, h = img.size
                mode = img.mode
        except Exception:
            return False
        if min(w, h) < 1 or max(w, h) / min(w, h) > MAX_ASPECT:
            return False
        return w * h <= self.fallback.max_pixels and mode in _GPU_MODES

    def materialize(self, items: Sequence[Prepared]) -> list[torch.Tensor | ImageError]:
        """Device tensors (3x224x224, normalised) in the order given, or the image's error."""
        encoded = [(i, it) for i, it in enumerate(items) if isinstance(it, Encoded)]
        out: list[torch.Tensor | ImageError] = [
            it.to(self.device, non_blocking=True) if isinstance(it, torch.Tensor) else it
            for it in items
        ]  # type: ignore[misc]
        if not encoded:
            return out
        try:
            decoded = decode_jpeg(
                [e.data for _, e in encoded], mode=ImageReadMode.RGB, device=self.device
            )
        except RuntimeError:
            # One bad file fails the whole batched call; decode one by one to find it.
            decoded = [self._decode_one(e) for _, e in encoded]
        for (i, _), img in zip(encoded, decoded, strict=True):
            out[i] = img if isinstance(img, ImageError) else self._transform(img)
        return out

    def _decode_one(self, enc: Encoded) -> torch.Tensor | ImageError:
        try:
            return decode_jpeg(enc.data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            log.info("nvJPEG refused %s; decoding it on the CPU", enc.name)
        try:
            return self.fallback(io.BytesIO(enc.data.numpy().tobytes()), enc.name).to(self.device)
        except ImageError as exc:
            return exc

    def _transform(self, img: torch.Tensor) -> torch.Tensor:
        if img.dtype != torch.uint8:  # already preprocessed by the CPU fallback
            return img
        img = F.resize(img, [RESIZE], interpolation=F.InterpolationMode.BILINEAR, antialias=True)
        img = F.center_crop(img, self.crop)
        return (img.float().div_(255) - self.mean) / self.std

    def warm(self) -> None:
        """Initialise nvJPEG and the resize kernels before the child reports ready."""
        self.materialize([self.read(warm_up_jpeg(), "<warm-up>")])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
