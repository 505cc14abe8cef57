"""A deterministic corpus of realistic JPEGs derived from the photos shipped with scikit-image.

Image ``i`` depends only on ``i`` and the seed, so a smaller corpus is a prefix of a larger
one and only missing files are ever built.
"""

from __future__ import annotations

import logging
import os
from functools import cache
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, ImageEnhance, ImageOps

log = logging.getLogger(__name__)

# Colour photographs only: greyscale and synthetic images would make decode and
# classification cheaper than real traffic.
SOURCES = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "hubble_deep_field.jpg",
    "ihc.png",
)
SHORT_SIDE = (300, 500)
JPEG_QUALITY = 90
SEED = 20240611


@cache
def _source(name: str) -> Image.Image:
    folder = Path(os.path.dirname(skimage.data.__file__))
    with Image.open(folder / name) as im:
        return im.convert("RGB")


def image_name(index: int) -> str:
    return f"img_{index:06d}.jpg"


def make_image(index: int, seed: int = SEED) -> Image.Image:
    """Image ``index``: a random crop, flip, rescale and colour jitter of one source photo."""
    rng = np.random.default_rng([seed, index])
    src = _source(SOURCES[index % len(SOURCES)])
    w, h = src.size
    # A crop keeping 55-100% of each side leaves the subject recognisable.
    cw = int(w * rng.uniform(0.55, 1.0))
    ch = int(h * rng.uniform(0.55, 1.0))
    left = int(rng.integers(0, w - cw + 1))
    top = int(rng.integers(0, h - ch + 1))
    im = src.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        im = ImageOps.mirror(im)
    short = int(rng.integers(SHORT_SIDE[0], SHORT_SIDE[1] + 1))
    scale = short / min(im.size)
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        im = enhancer(im).enhance(float(rng.uniform(0.85, 1.15)))
    return im


def build(count: int, folder: Path, seed: int = SEED) -> list[Path]:
    """Ensure images ``0..count-1`` exist in ``folder``; return their paths in order.

    Another ``seed`` gives a disjoint set of crops (used to calibrate int8 on images the
    measurement never sees)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / image_name(i) for i in range(count)]
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    if missing:
        log.info("building %d of %d corpus images in %s", len(missing), count, folder.name)
    for i in missing:
        tmp = paths[i].with_suffix(".tmp")
        make_image(i, seed).save(tmp, format="JPEG", quality=JPEG_QUALITY)
        # Rename last so an interrupted build never leaves a truncated image behind.
        os.replace(tmp, paths[i])
    return paths


def write_manifest(paths: list[Path], target: Path) -> Path:
    """One absolute path per line, the input format of ``visionq submit --from-file``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(f"{p.resolve()}\n" for p in paths))
    return target
