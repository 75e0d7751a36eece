"""Token weighting: pure functions of per-token losses (DESIGN §3).

Every objective is ``loss = Σ w_t L_t / (Σ w_t + ε)`` over target tokens; a method only
chooses the weights ``w`` (same shape as the losses, zero outside the target mask).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

L_CRIT = math.log(2.0)  # greedy-recall threshold: p_t > 0.5  <=>  L_t < ln 2
EPS = 1e-8


def sft_weights(losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SFT: uniform weights over target tokens (the plain answer-only mean)."""
    return mask.to(losses.dtype)


def weighted_loss(losses: torch.Tensor, weights: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Σ w_t L_t / (Σ w_t + ε)."""
    return (weights * losses).sum() / (weights.sum() + eps)


WeightFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
METHODS: dict[str, WeightFn] = {"sft": sft_weights}
