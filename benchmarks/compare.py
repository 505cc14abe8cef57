"""Agreement between two sets of classifier outputs: full probability arrays or top-k lists."""

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

    def figures(self) -> dict[str, float | int]:
        return {
            "images": self.images,
            "top1_agree_pct": round(100 * self.top1, 2),
            "top5_same_order_pct": round(100 * self.top5_order, 2),
            "max_dprob": float(f"{self.max_dprob:.3g}"),
            "mean_max_dprob": float(f"{self.mean_max_dprob:.3g}"),
        }


def _summarise(top1: list[bool], top5: list[bool], dmax: list[float]) -> Agreement:
    if not top1:
        raise ValueError("no images to compare")
    return Agreement(
        images=len(top1),
        top1=float(np.mean(top1)),
        top5_order=float(np.mean(top5)),
        max_dprob=float(np.max(dmax)),
        mean_max_dprob=float(np.mean(dmax)),
    )


def probs_vs_probs(a: np.ndarray, b: np.ndarray) -> Agreement:
    """Full (images, classes) arrays: the difference is taken over every class."""
    top_a = np.argsort(-a, axis=1)[:, :5]
    top_b = np.argsort(-b, axis=1)[:, :5]
    dmax = np.abs(a - b).max(axis=1)
    return _summarise(
        list(top_a[:, 0] == top_b[:, 0]),
        list((top_a == top_b).all(axis=1)),
        list(dmax.astype(float)),
    )


def topk_vs_topk(a: Sequence[TopK], b: Sequence[TopK]) -> Agreement:
    """Top-k lists: the difference is taken over the classes present in both lists."""
    top1, top5, dmax = [], [], []
    for ka, kb in zip(a, b, strict=True):
        pa, pb = dict(ka), dict(kb)
        top1.append(ka[0][0] == kb[0][0])
        top5.append([c for c, _ in ka] == [c for c, _ in kb])
        shared = pa.keys() & pb.keys()
        dmax.append(max((abs(pa[c] - pb[c]) for c in shared), default=0.0))
    return _summarise(top1, top5, dmax)


def topk_vs_probs(a: Sequence[TopK], probs: np.ndarray) -> Agreement:
    """Top-k lists against full arrays: each reported class is checked against its probability."""
    top1, top5, dmax = [], [], []
    for ka, row in zip(a, probs, strict=True):
        order = np.argsort(-row)[: len(ka)]
        top1.append(ka[0][0] == int(order[0]))
        top5.append([c for c, _ in ka] == [int(c) for c in order])
        dmax.append(max(abs(p - float(row[c])) for c, p in ka))
    return _summarise(top1, top5, dmax)
