"""Training recipe: setup -> loop -> eval. The loop only does forward, weights, backward, step, log."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import yaml
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..errors import MemlawError, TrainingInterrupted
from ..evaluate.recall import P_THRESHOLD, teacher_forced
from ..io import write_csv, write_json, write_yaml
from ..model.forward import AnswerForward
from ..session import RUN_FILES, Session, new_session
from .objectives import (
    WindowState,
    curriculum_count,
    curriculum_indices,
    first_errors,
    ot_weights,
    sft_weights,
    sliding_window_weights,
    update_window,
    weighted_loss,
    with_fallback,
)

LOG_FIELDS = [
    "epoch", "step", "loss", "lr", "mean_target_prob", "stubborn_tokens",
    "active_tokens", "masked_tokens", "updated", "anchor", "window",
]


@dataclass
class TrainState:
    steps: int = 0
    epochs_completed: int = 0
    train_seconds: float = 0.0
    stopped: str = "epochs"  # epochs | budget | certified | interrupted
    steps_to_certified: int | None = None
    seconds_to_certified: float | None = None
    log: list[dict] = field(default_factory=list)

    @property
    def interrupted(self) -> bool:
        return self.stopped == "interrupted"

    def summary(self) -> dict:
        return {
            "steps": self.steps,
            "epochs_completed": self.epochs_completed,
            "train_seconds": round(self.train_seconds, 3),
            "stopped": self.stopped,
            "interrupted": self.interrupted,
            "steps_to_certified": self.steps_to_certified,
            "seconds_to_certified": None if self.seconds_to_certified is None else round(self.seconds_to_certified, 3),
        }


@dataclass
class Check:
    """Result of a certificate check over all records (teacher forcing, eval mode)."""

    epoch: int
    steps: int
    certified: int
    total: int
    stubborn_tokens: int
    loss: float

    @property
    def done(self) -> bool:
        return self.certified == self.total


# ---------------------------------------------------------------------- method plumbing
def uses_sliding_window(cfg: TrainConfig, n_records: int) -> bool:
    """memft_sw: the sliding window for one long record, the curriculum for many (unless forced)."""
    if cfg.method != "memft_sw":
        return False
    return cfg.sw_mode == "sliding" or (cfg.sw_mode == "auto" and n_records == 1)


def curriculum_boundaries(cfg: TrainConfig) -> list[int]:
    """DESIGN default [20, 40, 60, 80, E]; runs of at most 80 epochs spread the stages evenly."""
    if cfg.curriculum_boundaries is not None:
        return list(cfg.curriculum_boundaries)
    k = len(cfg.curriculum_ratios)
    if k == 5 and cfg.epochs > 80:
        return [20, 40, 60, 80, cfg.epochs]
    return [max(1, round(cfg.epochs * (i + 1) / k)) for i in range(k)]


class TokenWeighter:
    """Per-token weights for cfg.method; holds the sliding window's per-record state."""

    def __init__(self, cfg: TrainConfig, sliding: bool):
        self.cfg = cfg
        self.sliding = sliding
        self.windows: dict[int, WindowState] = {}

    def __call__(self, losses, mask, correct, record_ids: list[int]) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        if cfg.method == "sft":
            return sft_weights(losses, mask), {}
        if not self.sliding:  # memft_ot, and memft_sw inside curriculum batches
            return ot_weights(losses, mask, cfg.threshold_p, cfg.position_weighting, cfg.position_lambda), {}
        anchors = first_errors(correct, mask)
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


def uses_curriculum(cfg: TrainConfig, n_records: int) -> bool:
    return cfg.method == "memft_sw" and not uses_sliding_window(cfg, n_records)


def active_count(cfg: TrainConfig, n: int, epoch: int) -> int:
    """How many records are trained at `epoch`: all, or the curriculum's share."""
    if not uses_curriculum(cfg, n):
        return n
    return curriculum_count(n, epoch, cfg.batch_size, cfg.curriculum_ratios, curriculum_boundaries(cfg))


def planned_steps(cfg: TrainConfig, n: int) -> int:
    """Optimiser steps the run takes if nothing stops it early (the LR schedule's length)."""
    planned = sum(
        math.ceil(math.ceil(active_count(cfg, n, e) / cfg.batch_size) / cfg.grad_accum) for e in range(cfg.epochs)
    )
    return min(planned, cfg.max_steps or planned)


# ---------------------------------------------------------------------- run folder
def prepare_out_dir(out: Path, config: dict, overwrite: bool) -> None:
    """Refuse to clobber a different finished run unless overwrite is set."""
    if out.exists() and not out.is_dir():
        raise MemlawError(f"--out {out} exists and is not a directory")
    finished = all((out / name).is_file() for name in RUN_FILES)
    if finished and not overwrite:
        try:
            previous = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            previous = None
        if previous != config:
            raise MemlawError(f"--out {out} holds a different finished run; choose another folder or pass --overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MemlawError(f"cannot create --out {out}: {e.strerror or e}")
    for name in ("metrics.json", "records.jsonl", "train_state.json"):
        (out / name).unlink(missing_ok=True)  # results of an older run must not look like this run's


def batches(indices: list[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    order = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def worth_checking(cfg: TrainConfig, epoch_stubborn: int) -> bool:
    """Check the certificate after an epoch only if its training pass saw no stubborn token.

    With dropout 0 the training forward is the check's forward, so an epoch that met a stubborn
    token was not certified before its updates and rarely is right after them; skipping those
    checks costs at most one epoch of delay and saves a forward over all records per epoch.
    With dropout the training pass is noisy, so every epoch is checked.
    """
    return cfg.dropout > 0 or epoch_stubborn == 0


def check_certified(s: Session, forward: AnswerForward, epoch: int, steps: int) -> Check:
    stats = teacher_forced(forward, s.cfg.eval_batch_size)
    tokens = sum(len(x.losses) for x in stats)
    return Check(
        epoch=epoch,
        steps=steps,
        certified=sum(x.certified for x in stats),
        total=len(stats),
        stubborn_tokens=sum(len(x.stubborn) for x in stats),
        loss=sum(float(x.losses.sum()) for x in stats) / tokens,
    )


# ---------------------------------------------------------------------- the loop
def train_loop(
    s: Session,
    forward: AnswerForward,
    out: Path,
    progress: bool = True,
    on_check: Callable[[Check], None] | None = None,
) -> TrainState:
    cfg, memory = s.cfg, s.memory
    n = len(forward)
    total_steps = planned_steps(cfg, n)
    if uses_curriculum(cfg, n):  # shuffled once; epoch e trains a prefix of it
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        bounds = curriculum_boundaries(cfg)
        active = lambda epoch: curriculum_indices(order, epoch, cfg.batch_size, cfg.curriculum_ratios, bounds)  # noqa: E731
    else:
        active = lambda epoch: list(range(n))  # noqa: E731
    weighter = TokenWeighter(cfg, uses_sliding_window(cfg, n))
    params = memory.parameters()
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    state = TrainState()
    last_epoch_tensors = memory.state_dict()
    bar = tqdm(total=total_steps, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    epoch = 0

    def certify(epoch: int) -> bool:
        check = check_certified(s, forward, epoch, state.steps)
        memory.set_training(True)
        if on_check is not None:
            on_check(check)
        if check.done:
            state.stopped = "certified"
            state.steps_to_certified = state.steps
            state.seconds_to_certified = time.perf_counter() - start
        return check.done

    try:
        memory.set_training(True)
        for epoch in range(cfg.epochs):
            micro = batches(active(epoch), cfg.batch_size, generator)
            epoch_stubborn = 0
            for first in range(0, len(micro), cfg.grad_accum):
                lr = cfg.lr * max(0.0, 1.0 - state.steps / total_steps)  # linear decay to 0, no warm-up
                row = optimiser_step(s, forward, micro[first : first + cfg.grad_accum], weighter, optimizer, lr)
                state.steps += 1
                state.log.append({"epoch": epoch, "step": state.steps, **row})
                epoch_stubborn += row["stubborn_tokens"]
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{row['loss']:.4f}", stubborn=row["stubborn_tokens"], refresh=False)
                if cfg.stop_when == "certified" and cfg.check_every and state.steps % cfg.check_every == 0:
                    if certify(epoch):
                        break
                if state.steps >= total_steps:
                    break
            state.epochs_completed = epoch + 1
            last_epoch_tensors = memory.state_dict()
            write_csv(out / "train_log.csv", state.log, LOG_FIELDS)
            if state.stopped == "certified":
                break
            if cfg.stop_when == "certified" and not cfg.check_every and worth_checking(cfg, epoch_stubborn):
                if certify(epoch):
                    break
            if state.steps >= total_steps:
                state.stopped = "budget" if cfg.max_steps == total_steps else "epochs"
                break
    except KeyboardInterrupt:
        state.stopped = "interrupted"
        state.train_seconds = time.perf_counter() - start
        state.log = [r for r in state.log if r["epoch"] < state.epochs_completed]
        state.steps = len(state.log)  # the steps that the kept adapter has seen
        memory.save(out, last_epoch_tensors)
        write_csv(out / "train_log.csv", state.log, LOG_FIELDS)
        write_json(out / "train_state.json", state.summary())
        raise TrainingInterrupted(
            f"interrupted during epoch {epoch}; kept the adapter of the last completed epoch "
            f"({state.epochs_completed} epoch(s)) in {out}"
        )
    finally:
        bar.close()
        memory.set_training(False)
    state.train_seconds = time.perf_counter() - start
    return state


def optimiser_step(s: Session, forward: AnswerForward, group: list[list[int]], weighter, optimizer, lr: float) -> dict:
    """Forward, weights, backward over the micro-batches of one optimiser step; then clip and step.

    A step whose micro-batches all have zero total weight (zero-bp) does no backward and no update.
    """
    cfg = s.cfg
    params = [p for group_ in optimizer.param_groups for p in group_["params"]]
    loss_sum, prob_sum, n_tok, stubborn, active, masked, backwards = 0.0, 0.0, 0, 0, 0, 0, 0
    info: dict = {}
    for idx in group:
        tokens = forward(idx)
        losses, mask = tokens.losses, tokens.batch.target_mask  # (B, L)
        weights, info = weighter(losses, mask, tokens.correct, idx)
        loss = weighted_loss(losses, weights)
        with torch.no_grad():  # the numbers go to the host in one transfer: one GPU sync per micro-batch
            probs = torch.exp(-losses) * mask  # (B, L), 0 at padding
            numbers = torch.stack([(weights > 0).sum(), mask.sum(), ((probs <= P_THRESHOLD) & mask).sum(),
                                   loss.detach(), probs.sum()]).tolist()
        n_active, n_mask, n_stubborn = map(int, numbers[:3])
        loss_value, prob_value = numbers[3:]
        if n_active or not cfg.zero_bp:
            (loss / len(group)).backward()
            backwards += 1
        active += n_active
        masked += n_mask - n_active
        loss_sum += loss_value / len(group)
        prob_sum += prob_value
        n_tok += n_mask
        stubborn += n_stubborn
    if backwards:
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {
        "loss": round(loss_sum, 6),
        "lr": lr,
        "mean_target_prob": round(prob_sum / max(n_tok, 1), 6),
        "stubborn_tokens": stubborn,
        "active_tokens": active,
        "masked_tokens": masked,
        "updated": int(backwards > 0),
        "anchor": info.get("anchor", ""),
        "window": info.get("window", ""),
    }


def train(
    cfg: TrainConfig,
    out: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    on_check: Callable[[Check], None] | None = None,
) -> dict:
    """Memorize cfg.data into a fresh memory unit, save it in `out`, evaluate, and return the metrics."""
    from ..evaluate.run import evaluate_session, initial_stats

    out = Path(out)
    session = new_session(cfg)
    config = session.cfg.to_dict()
    prepare_out_dir(out, config, overwrite)
    records, encoded = session.load_data()
    forward = session.answer_forward(encoded)
    initial = initial_stats(session, forward)  # measured once, before training
    write_yaml(out / "config.yaml", config)
    state = train_loop(session, forward, out, progress, on_check)
    session.memory.save(out)
    write_json(out / "train_state.json", state.summary())
    return evaluate_session(session, records, forward, out, state.summary(), initial=initial)
