"""Token weighting: pure functions of per-token losses (DESIGN §3).

Every objective is ``loss = Σ w_t L_t / (Σ w_t + ε)`` over target tokens; a method only
chooses the weights ``w``. Tensors are (B, L) with target tokens right-aligned; ``mask``
is True on target tokens, and weights are zero outside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import RECALL_P

EPS = 1e-8


def loss_threshold(p: float) -> float:
    """The per-token loss at which the target probability equals p (p = 0.5: L_crit = ln 2)."""
    return -math.log(p)


def target_positions(mask: torch.Tensor) -> torch.Tensor:
    """Index of each token within its record's target, 0.. (B, L); -1 outside the mask."""
    return torch.where(mask, mask.long().cumsum(dim=1) - 1, torch.full_like(mask, -1, dtype=torch.long))


def sft_weights(losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SFT: uniform weights over target tokens (the plain answer-only mean)."""
    return mask.to(losses.dtype)


def ot_weights(
    losses: torch.Tensor,
    mask: torch.Tensor,
    threshold_p: float = RECALL_P,
    position_weighting: bool = False,
    lam: float = 2.0,
) -> torch.Tensor:
    """MemFT-OT: w_t = 1[L_t > -ln p]; optionally exp(-λ·i/(n-1)) over a record's n hard tokens."""
    hard = mask & (losses.detach() > loss_threshold(threshold_p))
    weights = hard.to(losses.dtype)
    if position_weighting:
        i = (hard.long().cumsum(dim=1) - 1).to(losses.dtype)  # order among the row's hard tokens
        n = hard.sum(dim=1, keepdim=True).to(losses.dtype)
        frac = torch.where(n > 1, i / (n - 1).clamp(min=1), torch.zeros_like(i))
        weights = weights * torch.exp(-lam * frac)
    return weights


@dataclass
class WindowState:
    """Per-sample state of the sliding window: last step's anchor, patience counter, expansion e."""

    anchor: int = -1
    patience: int = 0
    expansion: float = 1.0


def first_errors(correct: torch.Tensor, mask: torch.Tensor) -> list[int | None]:
    """Per row, the target index of the first teacher-forced argmax error (None if none)."""
    pos = target_positions(mask)
    wrong = mask & ~correct
    out: list[int | None] = []
    for row in range(mask.shape[0]):
        idx = pos[row][wrong[row]]
        out.append(int(idx.min()) if idx.numel() else None)
    return out


def sliding_window_weights(
    losses: torch.Tensor,
    mask: torch.Tensor,
    anchors: list[int | None],
    windows: list[float],
    scale: float = 10.0,
    tau: float = 20.0,
    floor: float = 0.01,
    threshold_p: float = RECALL_P,
) -> torch.Tensor:
    """MemFT-SW (intra-sample): base sigmoid(s·(L_t − L_crit)) times a decay after the anchor.

    The multiplier is exp(−max(t−anchor, 0)/τ) for t < anchor + W (so 1 before the anchor)
    and ``floor`` for t ≥ anchor + W. Rows without an anchor keep their base weights.
    """
    base = torch.sigmoid(scale * (losses.detach() - loss_threshold(threshold_p))) * mask
    pos = target_positions(mask).to(losses.dtype)
    mult = torch.ones_like(base)
    for row, (anchor, window) in enumerate(zip(anchors, windows)):
        if anchor is None:
            continue
        after = pos[row] - anchor
        decay = torch.exp(-after.clamp(min=0) / tau)
        mult[row] = torch.where(after >= window, torch.full_like(decay, floor), decay)
    return base * mult


def update_window(
    state: WindowState, anchor: int | None, patience: int = 3, step: float = 0.5, max_expansion: float = 4.0
) -> WindowState:
    """The reference's window growth (DESIGN §3): a step whose anchor equals the previous step's adds 1 to
    the patience counter, any other step resets it to 0; at every step with patience >= `patience` the
    expansion grows by `step` (capped), at every other step it is 1. With the anchor stuck from step 1,
    e = 1, 1, 1, 1.5, 2, … up to the cap. A sample without an error has no anchor (and resets)."""
    if anchor is None:
        return WindowState(-1, 0, 1.0)
    count = state.patience + 1 if anchor == state.anchor else 0
    expansion = min(state.expansion + step, max_expansion) if count >= patience else 1.0
    return WindowState(anchor, count, expansion)


def with_fallback(weights: torch.Tensor, mask: torch.Tensor, min_total: float = 1e-5) -> torch.Tensor:
    """Plain mean when the weights (nearly) vanish. Decided on the device: no host sync."""
    return torch.where(weights.sum() < min_total, mask.to(weights.dtype), weights)


def weighted_loss(losses: torch.Tensor, weights: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Σ w_t L_t / (Σ w_t + ε)."""
    return (weights * losses).sum() / (weights.sum() + eps)


def curriculum_count(n: int, epoch: int, batch_size: int, ratios: list[float], boundaries: list[int]) -> int:
    """Samples active at `epoch`: ratio(e)·n rounded down to whole batches (at least one batch)."""
    stage = next((i for i, b in enumerate(boundaries) if epoch < b), len(boundaries) - 1)
    batches = int(ratios[stage] * n) // batch_size
    return min(n, max(1, batches) * batch_size)


def curriculum_indices(
    order: list[int], epoch: int, batch_size: int, ratios: list[float], boundaries: list[int]
) -> list[int]:
    """The first ratio(epoch) fraction of the once-shuffled `order`, in whole batches."""
    return order[: curriculum_count(len(order), epoch, batch_size, ratios, boundaries)]
