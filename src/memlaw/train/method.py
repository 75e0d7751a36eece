"""Training methods: what a method changes about the loop, kept out of the loop, one class per method.

A :class:`Method` answers the loop's three method-dependent questions (DESIGN §3):

* which records an epoch trains: all of them, or memft_sw's curriculum share of a
  once-shuffled order;
* the per-token weights of a batch (the pure functions of :mod:`.objectives`; the sliding
  window keeps per-record state between steps);
* how many optimizer steps the run plans (the length of the linear LR schedule).

A method also checks its own fields (:meth:`Method.check`): config.validate checks the fields every run reads,
and :func:`checked` adds the method's name and every method's fields; `train`, the session, a sweep grid's cells
and a run folder's config.yaml go through it.

Adding a method: a subclass here, registered in METHODS (the names --method and a grid's ``methods`` accept come
from it). Its hyperparameters, if it has new ones, are TrainConfig fields, as every flag is.
"""

from __future__ import annotations

import math

import torch

from ..config import TrainConfig, field_error
from ..errors import MemlawError
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


def curriculum_boundaries(cfg: TrainConfig) -> list[int]:
    """DESIGN default [20, 40, 60, 80, E]; runs of at most 80 epochs spread the stages evenly."""
    if cfg.curriculum_boundaries is not None:
        return list(cfg.curriculum_boundaries)
    k = len(cfg.curriculum_ratios)
    if k == 5 and cfg.epochs > 80:
        return [20, 40, 60, 80, cfg.epochs]
    return [max(1, round(cfg.epochs * (i + 1) / k)) for i in range(k)]


class Method:
    """A training method applied to a run of `n` records: which records an epoch trains and in which
    micro-batches, each batch's token weights, and the optimizer steps the run plans. One subclass per
    cfg.method, registered in METHODS; this base trains every record every epoch, reshuffled."""

    name = ""
    zero_bp = False  # a step whose weights are all zero is skipped (no backward, no update)

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        """Raise config.field_error for a bad value of a field this method reads (the base reads none of its own)."""

    def __init__(self, cfg: TrainConfig, n: int):
        self.cfg, self.n = cfg, n
        self.order = self._order()
        self.planned_steps = self._planned_steps()

    def _order(self) -> list[int]:
        return list(range(self.n))

    def active(self, epoch: int) -> list[int]:
        """The records trained at `epoch`."""
        return self.order

    def batches(self, epoch: int, generator: torch.Generator) -> list[list[int]]:
        """The epoch's micro-batches, batch_size records at a time, the active records in a fresh random order."""
        indices = self.active(epoch)
        return self._chunks([indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()])

    def weights(self, tokens: AnswerTokens, record_ids: list[int]) -> tuple[torch.Tensor, dict]:
        """Per-token weights (B, L) for a batch of records, and what to log about them."""
        raise NotImplementedError

    def _chunks(self, order: list[int]) -> list[list[int]]:
        size = self.cfg.batch_size
        return [order[i : i + size] for i in range(0, len(order), size)]

    def _planned_steps(self) -> int:
        """Optimizer steps the run takes if nothing stops it early (the LR schedule's length)."""
        cfg = self.cfg
        planned = sum(math.ceil(math.ceil(len(self.active(e)) / cfg.batch_size) / cfg.grad_accum)
                      for e in range(cfg.epochs))
        return min(planned, cfg.max_steps or planned)


class SFT(Method):
    """Plain teacher-forced cross-entropy: every target token, equally."""

    name = "sft"

    def weights(self, tokens: AnswerTokens, record_ids: list[int]) -> tuple[torch.Tensor, dict]:
        return sft_weights(tokens.losses, tokens.batch.target_mask), {}


class MemFTOT(Method):
    """MemFT, one-time: only the tokens not yet recalled (loss above the threshold's), optionally weighted by position.
    A step with none trains on the plain mean, as the reference does, or with --zero-bp is skipped."""

    name = "memft_ot"

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        _check_threshold(cfg)

    def __init__(self, cfg: TrainConfig, n: int):
        super().__init__(cfg, n)
        self.zero_bp = cfg.zero_bp

    def weights(self, tokens: AnswerTokens, record_ids: list[int]) -> tuple[torch.Tensor, dict]:
        cfg, mask = self.cfg, tokens.batch.target_mask
        weights = ot_weights(tokens.losses, mask, cfg.threshold_p, cfg.position_weighting, cfg.position_lambda)
        return (weights if self.zero_bp else with_fallback(weights, mask)), {}


class MemFTSW(Method):
    """MemFT, sliding window: for many records a curriculum (a growing share of a once-shuffled order, in that order,
    with memft_ot's weights; a batch without hard tokens is skipped, as the reference requires), for one long
    record a window that follows its first wrong token (kept per record between steps)."""

    name = "memft_sw"
    modes = ("auto", "curriculum", "sliding")

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        _check_threshold(cfg)
        if cfg.sw_mode not in cls.modes:
            raise field_error("sw_mode", f"must be one of {', '.join(cls.modes)}, got {cfg.sw_mode!r}")
        for name in ("sw_window", "sw_patience", "sw_tau", "sw_scale", "sw_expand_max"):
            if getattr(cfg, name) <= 0:
                raise field_error(name, f"must be > 0, got {getattr(cfg, name)!r}")
        ratios, b = cfg.curriculum_ratios, cfg.curriculum_boundaries
        if not ratios or any(not 0 < r <= 1 for r in ratios):
            raise field_error("curriculum_ratios", f"must be fractions in (0, 1], got {ratios!r}")
        if b is not None and (len(b) != len(ratios) or any(x >= y for x, y in zip(b, b[1:])) or b[0] <= 0):
            raise field_error("curriculum_boundaries",
                              f"must be {len(ratios)} increasing positive epochs (one per ratio), got {b!r}")

    def __init__(self, cfg: TrainConfig, n: int):
        self.sliding = cfg.sw_mode == "sliding" or (cfg.sw_mode == "auto" and n == 1)
        self.curriculum = self.zero_bp = not self.sliding
        self.boundaries = curriculum_boundaries(cfg)
        self.windows: dict[int, WindowState] = {}  # sliding window state per record id
        super().__init__(cfg, n)

    def _order(self) -> list[int]:
        if not self.curriculum:
            return super()._order()
        # shuffled once; epoch e trains a prefix of this order
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.cfg.seed)).tolist()

    def active(self, epoch: int) -> list[int]:
        if not self.curriculum:
            return self.order
        return curriculum_indices(self.order, epoch, self.cfg.batch_size, self.cfg.curriculum_ratios, self.boundaries)

    def batches(self, epoch: int, generator: torch.Generator) -> list[list[int]]:
        """The curriculum keeps its fixed order (the reference does not reshuffle); the sliding window reshuffles."""
        return self._chunks(self.active(epoch)) if self.curriculum else super().batches(epoch, generator)

    def weights(self, tokens: AnswerTokens, record_ids: list[int]) -> tuple[torch.Tensor, dict]:
        cfg, losses, mask = self.cfg, tokens.losses, tokens.batch.target_mask
        if self.curriculum:
            return ot_weights(losses, mask, cfg.threshold_p, cfg.position_weighting, cfg.position_lambda), {}
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


def _check_threshold(cfg: TrainConfig) -> None:
    if not 0.0 < cfg.threshold_p < 1.0:
        raise field_error("threshold_p", f"must be in (0, 1), got {cfg.threshold_p!r}")


METHODS: dict[str, type[Method]] = {m.name: m for m in (SFT, MemFTOT, MemFTSW)}


def unknown_method(name: object) -> MemlawError | None:
    """The error for a name that is not a registered method (None for a registered one)."""
    if name in METHODS:
        return None
    return field_error("method", f"unknown method {name!r}; choose from {', '.join(METHODS)}")


def checked(cfg: TrainConfig) -> TrainConfig:
    """`cfg` validated, with its method's name and the methods' own fields (config.validate leaves those to the
    methods). Every registered method checks its fields whichever method runs: a value that no method would accept
    is a typo or a damaged file, even where this run does not read it."""
    cfg.validate()
    if (error := unknown_method(cfg.method)) is not None:
        raise error
    for method in METHODS.values():
        method.check(cfg)
    return cfg


def method_for(cfg: TrainConfig, n: int) -> Method:
    """cfg.method applied to a run of `n` records (`cfg` already `checked`, as a session's is)."""
    return METHODS[cfg.method](cfg, n)
