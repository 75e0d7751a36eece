"""Training recipe: setup -> loop -> eval. The loop only does forward, weights, backward, step, log."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..data.encoding import Encoded, collate
from ..errors import MemlawError, TrainingInterrupted
from ..evaluate.recall import P_THRESHOLD
from ..io import write_csv, write_json, write_yaml
from ..model.forward import answer_logits, token_losses
from ..session import RUN_FILES, Session, new_session
from .objectives import METHODS, weighted_loss

LOG_FIELDS = ["epoch", "step", "loss", "lr", "mean_target_prob", "stubborn_tokens"]


@dataclass
class TrainState:
    steps: int = 0
    epochs_completed: int = 0
    train_seconds: float = 0.0
    interrupted: bool = False
    log: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "steps": self.steps,
            "epochs_completed": self.epochs_completed,
            "train_seconds": round(self.train_seconds, 3),
            "interrupted": self.interrupted,
        }


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


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    order = torch.randperm(n, generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def train_loop(s: Session, encoded: list[Encoded], out: Path, progress: bool = True) -> TrainState:
    cfg, memory = s.cfg, s.memory
    weight_fn = METHODS[cfg.method]
    device = s.loaded.device
    params = memory.parameters()
    n_batches = math.ceil(len(encoded) / cfg.batch_size)
    steps_per_epoch = math.ceil(n_batches / cfg.grad_accum)
    total_steps = cfg.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total_steps))
    generator = torch.Generator().manual_seed(cfg.seed)
    state = TrainState()
    last_epoch_tensors = memory.state_dict()
    bar = tqdm(total=total_steps, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    epoch = 0
    try:
        memory.set_training(True)
        for epoch in range(cfg.epochs):
            micro = batches(len(encoded), cfg.batch_size, generator)
            for first in range(0, len(micro), cfg.grad_accum):
                group = micro[first : first + cfg.grad_accum]
                loss_sum, prob_sum, n_tok, stubborn = 0.0, 0.0, 0, 0
                for idx in group:
                    batch = collate([encoded[i] for i in idx], s.pad_id).to(device)
                    losses = token_losses(answer_logits(memory.model, batch), batch.labels)  # (B, L)
                    mask = batch.target_mask
                    loss = weighted_loss(losses, weight_fn(losses, mask))
                    (loss / len(group)).backward()
                    with torch.no_grad():
                        probs = torch.exp(-losses[mask])
                    loss_sum += loss.item() / len(group)
                    prob_sum += float(probs.sum())
                    n_tok += int(mask.sum())
                    stubborn += int((probs <= P_THRESHOLD).sum())
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.steps += 1
                state.log.append(
                    {
                        "epoch": epoch,
                        "step": state.steps,
                        "loss": round(loss_sum, 6),
                        "lr": lr,
                        "mean_target_prob": round(prob_sum / max(n_tok, 1), 6),
                        "stubborn_tokens": stubborn,
                    }
                )
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{loss_sum:.4f}", stubborn=stubborn, refresh=False)
            state.epochs_completed = epoch + 1
            last_epoch_tensors = memory.state_dict()
            write_csv(out / "train_log.csv", state.log, LOG_FIELDS)
    except KeyboardInterrupt:
        state.interrupted = True
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


def train(cfg: TrainConfig, out: str | Path, overwrite: bool = False, progress: bool = True) -> dict:
    """Memorize cfg.data into a fresh memory unit, save it in `out`, evaluate, and return the metrics."""
    from ..evaluate.run import evaluate_session, initial_stats

    out = Path(out)
    session = new_session(cfg)
    config = session.cfg.to_dict()
    prepare_out_dir(out, config, overwrite)
    records, encoded = session.load_data()
    initial = initial_stats(session, encoded)  # measured once, before training
    write_yaml(out / "config.yaml", config)
    state = train_loop(session, encoded, out, progress)
    session.memory.save(out)
    write_json(out / "train_state.json", state.summary())
    return evaluate_session(session, records, encoded, out, state.summary(), initial=initial)
