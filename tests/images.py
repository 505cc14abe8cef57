"""Builders for test images: good photos in every mode, and broken files."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from visionq.schema import ErrorType

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def photo(name: str = "chelsea-cat.jpg") -> Image.Image:
    return Image.open(SAMPLES / name).convert("RGB")


def mixed_folder(dest: Path) -> dict[str, str | None]:
    """Write good and bad images into ``dest``; map file name -> expected error type."""
    dest.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str | None] = {}
    for p in sorted(SAMPLES.glob("*.jpg")):
        shutil.copy(p, dest / p.name)
        expected[p.name] = None
    base = photo()
    base.convert("CMYK").save(dest / "cmyk.jpg")
    base.convert("P", palette=Image.ADAPTIVE).save(dest / "palette.gif")
    base.convert("L").save(dest / "grey.png")
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(dest / "rgba.png")
    base.save(dest / "name with spaces ü.jpg")
    arr = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(arr).save(dest / "sixteen-bit.png")
    frames = [base, base.rotate(90), base.rotate(180)]
    frames[0].save(dest / "animated.gif", save_all=True, append_images=frames[1:])
    for name in ("cmyk.jpg", "palette.gif", "grey.png", "rgba.png", "name with spaces ü.jpg",
                 "sixteen-bit.png", "animated.gif"):  # fmt: skip
        expected[name] = None

    good = (SAMPLES / "coffee.jpg").read_bytes()
    (dest / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (dest / "empty.jpg").write_bytes(b"")
    (dest / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    expected["truncated.jpg"] = ErrorType.UNREADABLE_IMAGE
    expected["empty.jpg"] = ErrorType.UNREADABLE_IMAGE
    expected["notes.jpg"] = ErrorType.UNREADABLE_IMAGE
    return expected


def reference_probs(paths: list[str], weights: str) -> dict[str, np.ndarray]:
    """Softmax probabilities from torchvision's own preset and the same weights, in-process."""
    import torch
    from torchvision.models import ResNet18_Weights, resnet18

    model = resnet18(weights=None)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    preset = ResNet18_Weights.IMAGENET1K_V1.transforms()
    out = {}
    with torch.inference_mode():
        for p in paths:
            x = preset(Image.open(p).convert("RGB")).unsqueeze(0)
            out[p] = model(x).softmax(1)[0].numpy()
    return out


def encoded(img: Image.Image, fmt: str, **kw: object) -> io.BytesIO:
    """``img`` saved as ``fmt`` into a rewound in-memory file."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    buf.seek(0)
    return buf
