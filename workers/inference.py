"""Batched no-grad forward and top-k on a warm model."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from visionq.schema import PROB_DIGITS
from workers.device import Placement
from workers.precision import autocast

TopK = list[tuple[int, str, float]]


class Classifier:
    def __init__(
        self,
        model: torch.nn.Module,
        categories: Sequence[str],
        placement: Placement,
        autocast_dtype: torch.dtype | None,
    ) -> None:
        self.model = model
        self.categories = list(categories)
        self.placement = placement
        self.autocast_dtype = autocast_dtype

    @torch.inference_mode()
    def __call__(self, images: Sequence[torch.Tensor], k: int) -> list[TopK]:
        x = torch.stack(list(images)).to(self.placement.device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.placement, self.autocast_dtype):
            logits = self.model(x)
        # Softmax in fp32 whatever the forward ran in, so probabilities sum to 1.
        probs = logits.float().softmax(dim=1)
        k = max(1, min(k, probs.shape[1]))
        top_p, top_i = probs.topk(k, dim=1)
        top_p, top_i = top_p.cpu().tolist(), top_i.cpu().tolist()
        return [
            [(i, self.categories[i], round(p, PROB_DIGITS)) for i, p in zip(idx, ps, strict=False)]
            for idx, ps in zip(top_i, top_p, strict=False)
        ]
