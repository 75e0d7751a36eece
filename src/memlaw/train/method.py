"""Method plumbing: what a training method changes about the loop, kept out of the loop.

A :class:`Method` answers the loop's three method-dependent questions (DESIGN §3):

* which records an epoch trains: all of them, or memft_sw's curriculum share of a
  once-shuffled order;
* the per-token weights of a batch (the pure functions of :mod:`.objectives`; the sliding
  window keeps per-record state between steps);
* how many optimizer steps the run plans (the length of the linear LR schedule).
"""

from __future__ import annotations

import math

import torch

from ..config import TrainConfig
from ..model.forward import AnswerTokens
from .objectives import (
    WindowState,
    curriculum_count,
    curriculum_indices,
    first_errors,
    ot_weights,
    sft_weights,
    sliding_window_weights,
    update_window,
    with_fallback,
)


def uses_sliding_window(cfg: TrainConfig, n_records: int) -> bool:
    """memft_sw: the sliding window for one long record, the curriculum for many (unless forced)."""
    if cfg.method != "memft_sw":
        return False
    return cfg.sw_mode == "sliding" or (cfg.sw_mode == "auto" and n_records == 1)


def uses_curriculum(cfg: TrainConfig, n_records: int) -> bool:
    return cfg.method == "memft_sw" and not uses_sliding_window(cfg, n_records)


def curriculum_boundaries(cfg: TrainConfig) -> list[int]:
    """DESIGN default [20, 40, 60, 80, E]; runs of at most 80 epochs spread the stages evenly."""
    if cfg.curriculum_boundaries is not None:
        return list(cfg.curriculum_boundaries)
    k = len(cfg.curriculum_ratios)
    if k == 5 and cfg.epochs > 80:
        return [20, 40, 60, 80, cfg.epochs]
    return [max(1, round(cfg.epochs * (i + 1) / k)) for i in range(k)]


def active_count(cfg: TrainConfig, n: int, epoch: int) -> int:
    """How many records are trained at `epoch`: all, or the curriculum's share."""
    if not uses_curriculum(cfg, n):
        return n
    return curriculum_count(n, epoch, cfg.batch_size, cfg.curriculum_ratios, curriculum_boundaries(cfg))


def planned_steps(cfg: TrainConfig, n: int) -> int:
    """Optimizer steps the run takes if nothing stops it early (the LR schedule's length)."""
    planned = sum(
        math.ceil(math.ceil(active_count(cfg, n, e) / cfg.batch_size) / cfg.grad_accum) for e in range(cfg.epochs)
    )
    return min(planned, cfg.max_steps or planned)


class Method:
    """cfg.method applied to a run of `n` records: active records per epoch, token weights, planned steps."""

    def __init__(self, cfg: TrainConfig, n: int):
        self.cfg = cfg
        self.sliding = uses_sliding_window(cfg, n)
        self.curriculum = uses_curriculum(cfg, n)
        # The curriculum shuffles once; epoch e trains a prefix of this order.
        self.order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed)).tolist() if self.curriculum else list(range(n))
        self.boundaries = curriculum_boundaries(cfg)
        self.planned_steps = planned_steps(cfg, n)
        self.windows: dict[int, WindowState] = {}  # sliding window state per record id
        # A step whose weights are all zero: skipped (zero-bp) for the curriculum, as the reference requires,
        # and for memft_ot with --zero-bp; memft_ot otherwise falls back to the plain mean (see weights).
        self.zero_bp = self.curriculum or (cfg.method == "memft_ot" and cfg.zero_bp)

    def active(self, epoch: int) -> list[int]:
        """The records trained at `epoch`."""
        if not self.curriculum:
            return self.order
        return curriculum_indices(self.order, epoch, self.cfg.batch_size, self.cfg.curriculum_ratios, self.boundaries)

    def batches(self, epoch: int, generator: torch.Generator) -> list[list[int]]:
        """The epoch's micro-batches, batch_size records at a time: the active records in a fresh random
        order, or for the curriculum in its fixed once-shuffled order (the reference does not reshuffle)."""
        indices = self.active(epoch)
        order = indices if self.curriculum else [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
        size = self.cfg.batch_size
        return [order[i : i + size] for i in range(0, len(order), size)]

    def weights(self, tokens: AnswerTokens, record_ids: list[int]) -> tuple[torch.Tensor, dict]:
        """Per-token weights (B, L) for a batch of records, and the sliding window's anchor/window to log."""
        cfg, losses, mask = self.cfg, tokens.losses, tokens.batch.target_mask
        if cfg.method == "sft":
            return sft_weights(losses, mask), {}
        if not self.sliding:  # memft_ot, and memft_sw inside curriculum batches
            weights = ot_weights(losses, mask, cfg.threshold_p, cfg.position_weighting, cfg.position_lambda)
            # No token above the threshold: the reference's memft_ot trains on the plain mean; zero-bp skips.
            return (weights if self.zero_bp else with_fallback(weights, mask)), {}
        anchors = first_errors(tokens.correct, mask)
        states = [
            update_window(self.windows.get(i, WindowState()), a, cfg.sw_patience, cfg.sw_expand_step, cfg.sw_expand_max)
            for i, a in zip(record_ids, anchors)
        ]
        self.windows.update(zip(record_ids, states))
        windows = [cfg.sw_window * s.expansion for s in states]
        weights = sliding_window_weights(
            losses, mask, anchors, windows, cfg.sw_scale, cfg.sw_tau, cfg.sw_floor, cfg.threshold_p
        )
        return with_fallback(weights, mask), {"anchor": anchors[0], "window": windows[0]}
