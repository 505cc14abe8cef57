"""Agreement between two sets of classifier outputs: full probability arrays or top-k lists.

The second argument of each function is the reference (fp32). For every image whose top-1
class differs, the reference's own margin between its first and second class is kept: a flip
with a margin below the probability change is a near-tie, not a wrong answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# One image's top-k as (class index, probability), best first.
TopK = Sequence[tuple[int, float]]


@dataclass(frozen=True)
class Agreement:
    images: int
    top1: float  # fraction of images whose best class is the same
    top5_order: float  # fraction whose top-5 classes come in the same order
    max_dprob: float  # largest |prob difference| over the classes both sides report
    mean_max_dprob: float  # per-image largest difference, averaged
    flips: int  # images whose top-1 differs
    max_flip_margin: float  # largest reference top-1/top-2 margin among those images

    def figures(self) -> dict[str, float | int]:
        return {
            "images": self.images,
            "top1_agree_pct": round(100 * self.top1, 2),
            "top5_same_order_pct": round(100 * self.top5_order, 2),
            "max_dprob": float(f"{self.max_dprob:.3g}"),
            "mean_max_dprob": float(f"{self.mean_max_dprob:.3g}"),
            "top1_flips": self.flips,
            "max_flip_margin": float(f"{self.max_flip_margin:.3g}"),
        }


def _summarise(
    top1: list[bool], top5: list[bool], dmax: list[float], margins: list[float]
) -> Agreement:
    if not top1:
        raise ValueError("no images to compare")
    flipped = [m for same, m in zip(top1, margins, strict=True) if not same]
    return Agreement(
        images=len(top1),
        top1=float(np.mean(top1)),
        top5_order=float(np.mean(top5)),
        max_dprob=float(np.max(dmax)),
        mean_max_dprob=float(np.mean(dmax)),
        flips=len(flipped),
        max_flip_margin=max(flipped, default=0.0),
    )


def probs_vs_probs(a: np.ndarray, ref: np.ndarray) -> Agreement:
    """Full (images, classes) arrays: the difference is taken over every class."""
    top_a = np.argsort(-a, axis=1)[:, :5]
    top_r = np.argsort(-ref, axis=1)[:, :5]
    rows = np.arange(len(ref))
    margins = ref[rows, top_r[:, 0]] - ref[rows, top_r[:, 1]]
    return _summarise(
        list(top_a[:, 0] == top_r[:, 0]),
        list((top_a == top_r).all(axis=1)),
        list(np.abs(a - ref).max(axis=1).astype(float)),
        list(margins.astype(float)),
    )


def topk_vs_topk(a: Sequence[TopK], ref: Sequence[TopK]) -> Agreement:
    """Top-k lists: the difference is taken over the classes present in both lists."""
    top1, top5, dmax, margins = [], [], [], []
    for ka, kr in zip(a, ref, strict=True):
        pa, pr = dict(ka), dict(kr)
        top1.append(ka[0][0] == kr[0][0])
        top5.append([c for c, _ in ka] == [c for c, _ in kr])
        shared = pa.keys() & pr.keys()
        dmax.append(max((abs(pa[c] - pr[c]) for c in shared), default=0.0))
        margins.append(kr[0][1] - kr[1][1] if len(kr) > 1 else 1.0)
    return _summarise(top1, top5, dmax, margins)


def topk_vs_probs(a: Sequence[TopK], ref: np.ndarray) -> Agreement:
    """Top-k lists against full arrays: each reported class is checked against its probability."""
    top1, top5, dmax, margins = [], [], [], []
    for ka, row in zip(a, ref, strict=True):
        order = np.argsort(-row)[: max(len(ka), 2)]
        top1.append(ka[0][0] == int(order[0]))
        top5.append([c for c, _ in ka] == [int(c) for c in order[: len(ka)]])
        dmax.append(max(abs(p - float(row[c])) for c, p in ka))
        margins.append(float(row[order[0]] - row[order[1]]))
    return _summarise(top1, top5, dmax, margins)
