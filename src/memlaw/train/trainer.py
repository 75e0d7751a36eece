"""Training recipe: set up -> loop -> evaluate.

The loop (:func:`train_loop`) only steps a :class:`Run` (one cell's unit, method, optimizer,
stopper and state): forward, weights, backward, step, log. What the method changes lives in
:mod:`.method`, when to stop in :class:`Stopper`, the per-token probability trace
(--log-token-probs) in :class:`TokenProbLog`, and what Ctrl-C keeps in :func:`keep_last_epoch`.
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import RECALL_P, TrainConfig, pack_key
from ..errors import MemlawError, TrainingInterrupted
from ..evaluate.recall import TokenStats, teacher_forced, teacher_forced_pack
from ..evaluate.run import evaluate_pack, evaluate_session, initial_stats
from ..lock import FolderLock
from ..model.forward import AnswerForward, AnswerTokens
from ..model.loading import LoadedModel
from ..model.memory_unit import Adapter
from ..rundir import RunDir, RunMetrics
from ..session import Session, check_data_readable, new_session
from .method import Method, checked, method_for
from .objectives import weighted_loss
from .preserve import Preserver


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


def mid_training_stats(session: Session, forward: AnswerForward) -> list[TokenStats]:
    """Teacher-forced statistics of every record during training (eval mode: no dropout); leaves the
    adapter in training mode again, so the loop's next step trains as before."""
    stats = teacher_forced(forward, session.cfg.eval_batch_size)
    session.adapter.set_training(True)
    return stats


def check_certified(session: Session, forward: AnswerForward, epoch: int, steps: int) -> Check:
    """Teacher-forced check of every record (the certificate of DESIGN §4)."""
    stats = mid_training_stats(session, forward)
    tokens = sum(len(x.losses) for x in stats)
    return Check(
        epoch=epoch,
        steps=steps,
        certified=sum(x.certified for x in stats),
        total=len(stats),
        stubborn_tokens=sum(len(x.stubborn) for x in stats),
        loss=sum(float(x.losses.sum()) for x in stats) / tokens,
    )


def worth_checking(cfg: TrainConfig, epoch_stubborn: int) -> bool:
    """Check the certificate after an epoch only if its training pass saw no stubborn token.

    With dropout 0 the training forward is the check's forward, so an epoch that met a stubborn
    token was not certified before its updates and rarely is right after them; skipping those
    checks costs at most one epoch of delay and saves a forward over all records per epoch.
    With dropout the training pass is noisy, so every epoch is checked.
    """
    return cfg.dropout > 0 or epoch_stubborn == 0


class Stopper:
    """Decides when training ends and why: certified (--stop-when certified), budget (--max-steps), epochs."""

    def __init__(self, cfg: TrainConfig, total_steps: int, check: Callable[[int, int], Check],
                 on_check: Callable[[Check], None] | None = None):
        self.cfg, self.total_steps, self.check, self.on_check = cfg, total_steps, check, on_check
        self.started = time.perf_counter()
        self.reason: str | None = None
        self.steps_to_certified: int | None = None
        self.seconds_to_certified: float | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def after_step(self, epoch: int, steps: int) -> bool:
        """True ends the epoch early: certified at a --check-every check, or the planned steps are done."""
        if self.cfg.stop_when == "certified" and self.cfg.check_every and steps % self.cfg.check_every == 0:
            if self._certified(epoch, steps):
                return True
        return steps >= self.total_steps

    def after_epoch(self, epoch: int, steps: int, epoch_stubborn: int) -> bool:
        """True ends training; `reason` says why."""
        if self.reason == "certified":
            return True
        if self.cfg.stop_when == "certified" and not self.cfg.check_every and worth_checking(self.cfg, epoch_stubborn):
            if self._certified(epoch, steps):
                return True
        if steps >= self.total_steps:
            self.reason = "budget" if self.cfg.max_steps == self.total_steps else "epochs"
            return True
        return False

    def _certified(self, epoch: int, steps: int) -> bool:
        check = self.check(epoch, steps)
        if self.on_check is not None:
            self.on_check(check)
        if check.done:
            self.reason, self.steps_to_certified, self.seconds_to_certified = "certified", steps, self.elapsed()
        return check.done


class TokenProbLog:
    """--log-token-probs N: the teacher-forced p_t of every answer token at step 0, every N steps and the
    last step, kept in memory and written to token_probs.safetensors when training ends (or at Ctrl-C).

    Step 0's row is the base model's statistics that training measures anyway (`initial`: the
    unit is the identity before the first update). Every later row is its own teacher-forced
    pass, not a reused certificate check: checks run only with --stop-when certified, on their
    own schedule, so sharing would save a pass at few steps and tie the two together.
    """

    def __init__(self, session: Session, forward: AnswerForward, out: RunDir, ids: Sequence[Any],
                 initial: list[TokenStats]):
        self.session, self.forward, self.out, self.ids = session, forward, out, ids
        self.every = session.cfg.log_token_probs
        # (step, (tokens,) p_t): one append each, so Ctrl-C splits none
        self.rows: list[tuple[int, np.ndarray]] = [(0, self._probs(initial))] if self.every else []

    def due(self, steps: int, last: bool = False) -> bool:
        """Whether step `steps` gets a row: on the schedule, or (`last`) the last step's, unless it already has one."""
        return bool(self.every) and (steps % self.every == 0 if not last else self.rows[-1][0] != steps)

    def maybe_record(self, steps: int) -> None:
        if self.due(steps):
            self._record(steps)

    def add(self, steps: int, stats: list[TokenStats]) -> None:
        """The row of step `steps` from statistics measured outside (a pack measures its runs' rows together)."""
        self.rows.append((steps, self._probs(stats)))

    def finish(self, steps: int) -> None:
        """The last step's row (unless it fell on the schedule), then the file."""
        if self.due(steps, last=True):  # rows[0] is step 0's
            self._record(steps)
        self.save(steps)

    def save(self, through: int) -> None:
        """Write the rows of steps <= `through` (after Ctrl-C: those the kept adapter has seen), if any."""
        rows = [(step, probs) for step, probs in self.rows if step <= through]
        if rows:
            steps, probs = zip(*rows)
            lengths = [e.answer_len for e in self.forward.encoded]
            self.out.write_token_probs(steps, np.stack(probs), lengths, self.ids, RECALL_P)  # (checks, tokens)

    def _record(self, steps: int) -> None:
        self.rows.append((steps, self._probs(mid_training_stats(self.session, self.forward))))

    @staticmethod
    def _probs(stats: list[TokenStats]) -> np.ndarray:
        return np.concatenate([s.probs for s in stats]).astype(np.float32)  # (tokens,) every record's answer p_t


def keep_last_epoch(adapter: Adapter, tensors: dict, out: RunDir, state: TrainState, epoch: int, seconds: float,
                    token_probs: TokenProbLog) -> NoReturn:
    """Ctrl-C: save the adapter of the last completed epoch (not the half-trained live one) with the log,
    state and token-probability rows of the steps it has seen, then raise TrainingInterrupted."""
    state.stopped = "interrupted"
    state.train_seconds = seconds
    state.log = [r for r in state.log if r["epoch"] < state.epochs_completed]
    state.steps = len(state.log)
    adapter.save(out.path, tensors)
    out.write_log(state.log)
    out.write_state(state.summary())
    token_probs.save(state.steps)
    raise TrainingInterrupted(
        f"interrupted during epoch {epoch}; kept the adapter of the last completed epoch "
        f"({state.epochs_completed} epoch(s)) in {out}"
    )


# ---------------------------------------------------------------------- the loop
class Run:
    """One cell's training, everything that is its own: its unit (the session's adapter), records (`forward`),
    method, optimizer, shuffle generator, stopper, state and folder. :meth:`schedule` yields its optimizer steps
    and does its epoch bookkeeping between them, :meth:`step` takes one, so a loop can step several runs."""

    def __init__(self, session: Session, forward: AnswerForward, out: RunDir, token_probs: TokenProbLog,
                 progress: bool = True, on_check: Callable[[Check], None] | None = None,
                 preserve: Preserver | None = None):
        cfg, adapter = session.cfg, session.adapter
        self.session, self.forward, self.out, self.token_probs, self.preserve = session, forward, out, token_probs, preserve
        self.method = method_for(cfg, len(forward))  # active records per epoch, token weights, planned steps
        self.optimizer = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.state, self.last_epoch = TrainState(), adapter.state_dict()  # Ctrl-C keeps the last completed epoch's adapter
        self.bar = tqdm(total=self.method.planned_steps, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
        self.stop = Stopper(cfg, self.method.planned_steps, lambda e, steps: check_certified(session, forward, e, steps),
                            on_check)
        self.epoch = 0

    def schedule(self) -> Iterator[list[list[int]]]:
        """The run's optimizer steps, each a group of grad_accum micro-batches; after each epoch its log goes to
        disk and its adapter becomes what Ctrl-C keeps. Ends when the stopper says so."""
        cfg, state = self.session.cfg, self.state
        for self.epoch in range(cfg.epochs):
            # one epoch: the active records in the method's order, grad_accum micro-batches per step
            micro, self.epoch_stubborn = self.method.batches(self.epoch, self.shuffle), 0
            for first in range(0, len(micro), cfg.grad_accum):
                yield micro[first : first + cfg.grad_accum]
                if self.stop.after_step(self.epoch, state.steps):  # certified at a periodic check, or out of steps
                    break
            state.epochs_completed = self.epoch + 1
            self.last_epoch = self.session.adapter.state_dict()
            self.out.write_log(state.log)
            if self.stop.after_epoch(self.epoch, state.steps, self.epoch_stubborn):  # certified, budget, or last epoch
                return

    @property
    def lr(self) -> float:
        """The learning rate of the next step: linearly decayed over the planned steps, no warm-up."""
        return self.session.cfg.lr * max(0.0, 1.0 - self.state.steps / self.method.planned_steps)

    def step(self, group: list[list[int]]) -> None:
        """One optimizer step on `group`, logged."""
        self.record(optimizer_step(self.session, self.forward, group, self.method, self.optimizer, self.lr, self.preserve))

    def record(self, row: dict, trace: bool = True) -> None:
        """Log a step taken (its train_log.csv row); the token-probability trace, if its turn (unless `trace` is
        False: a pack measures its runs' rows together)."""
        state = self.state
        state.steps += 1
        state.log.append({"epoch": self.epoch, "step": state.steps, **row})
        self.epoch_stubborn += row["stubborn_tokens"]
        self.bar.update(1)
        self.bar.set_postfix(epoch=self.epoch, loss=f"{row['loss']:.4f}", stubborn=row["stubborn_tokens"], refresh=False)
        if trace:
            self.token_probs.maybe_record(state.steps)

    def finish(self) -> TrainState:
        state = self.state
        state.stopped = self.stop.reason or "epochs"
        state.steps_to_certified, state.seconds_to_certified = self.stop.steps_to_certified, self.stop.seconds_to_certified
        state.train_seconds = self.stop.elapsed()
        return state


def train_loop(
    session: Session,
    forward: AnswerForward,
    out: RunDir,
    token_probs: TokenProbLog,
    progress: bool = True,
    on_check: Callable[[Check], None] | None = None,
    preserve: Preserver | None = None,
) -> TrainState:
    """Train the session's adapter on the records of `forward`; the train log goes to `out` after every epoch,
    the token-probability trace (if asked for) at the end. `preserve`: the locality means (.preserve)."""
    run = Run(session, forward, out, token_probs, progress, on_check, preserve)
    session.adapter.set_training(True)  # the adapter's dropout on; the frozen base model stays in eval mode
    try:
        for group in run.schedule():
            run.step(group)
        token_probs.finish(run.state.steps)
    except KeyboardInterrupt:
        keep_last_epoch(session.adapter, run.last_epoch, out, run.state, run.epoch, run.stop.elapsed(), token_probs)
    finally:
        run.bar.close()
        session.adapter.set_training(False)
    return run.finish()


@dataclass
class StepStats:
    """Sums over the micro-batches of one optimizer step: one row of train_log.csv."""

    loss: float = 0.0
    prob_sum: float = 0.0
    tokens: int = 0
    stubborn: int = 0
    active: int = 0
    backwards: int = 0
    info: dict = field(default_factory=dict)  # the method's notes on the last micro-batch (memft_sw: anchor, window)

    def row(self, lr: float, info: dict) -> dict:
        return {
            "loss": round(self.loss, 6),
            "lr": lr,
            "mean_target_prob": round(self.prob_sum / max(self.tokens, 1), 6),
            "stubborn_tokens": self.stubborn,
            "active_tokens": self.active,
            "masked_tokens": self.tokens - self.active,
            "updated": int(self.backwards > 0),
            "anchor": info.get("anchor", ""),
            "window": info.get("window", ""),
        }


def accumulate(tokens: AnswerTokens, idx: list[int], method: Method, stats: StepStats, share: int) -> torch.Tensor | None:
    """One micro-batch of an optimizer step of `share` micro-batches: its weighted loss / share, to backward
    (None: zero-bp, nothing to learn), its numbers added to `stats`. A non-finite loss is MemlawError."""
    losses, mask = tokens.losses, tokens.batch.target_mask  # (B, L)
    weights, stats.info = method.weights(tokens, idx)
    loss = weighted_loss(losses, weights)
    with torch.no_grad():  # the numbers go to the host in one transfer: one GPU sync per micro-batch
        probs = torch.exp(-losses) * mask  # (B, L), 0 at padding
        stubborn = (probs <= RECALL_P) & tokens.batch.answer_mask  # the certificate's tokens
        numbers = torch.stack([(weights > 0).sum(), mask.sum(), stubborn.sum(), loss.detach(), probs.sum()]).tolist()
    if not math.isfinite(numbers[3]):
        raise MemlawError(f"training diverged: the loss is {numbers[3]} (not finite); a lower --lr may help")
    n_active, n_mask, n_stubborn = map(int, numbers[:3])
    stats.active += n_active
    stats.tokens += n_mask
    stats.stubborn += n_stubborn
    stats.loss += numbers[3] / share
    stats.prob_sum += numbers[4]
    if n_active or not method.zero_bp:
        stats.backwards += 1
        return loss / share
    return None


def apply_update(cfg: TrainConfig, optimizer: torch.optim.Optimizer, stats: StepStats, lr: float,
                 preserve: Preserver | None = None) -> dict:
    """After a step's backward passes: clip the run's own gradients, step its optimizer at `lr` (unless no
    micro-batch had weight: zero-bp), clear them; the step's train_log.csv row. `preserve` adds its penalty's
    gradient first, then projects A after the update (preserve_energy)."""
    params = [p for param_group in optimizer.param_groups for p in param_group["params"]]
    penalty = preserve.loss() if preserve is not None and stats.backwards else None
    if penalty is not None:
        penalty.backward()
    if stats.backwards:
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        optimizer.step()
        if preserve is not None:
            preserve.constrain()
    optimizer.zero_grad(set_to_none=True)
    row = stats.row(lr, stats.info)
    if preserve is not None:
        row["preserve_penalty"] = round(float(penalty.detach()), 6) if penalty is not None else ""
    return row


def optimizer_step(session: Session, forward: AnswerForward, group: list[list[int]], method: Method,
                   optimizer: torch.optim.Optimizer, lr: float, preserve: Preserver | None = None) -> dict:
    """Forward, weights, backward over the micro-batches of one optimizer step; then clip and step.

    A step whose micro-batches all have zero total weight (zero-bp) does no backward and no update.
    """
    stats = StepStats()
    for idx in group:
        loss = accumulate(forward(idx), idx, method, stats, len(group))
        if loss is not None:
            loss.backward()
    return apply_update(session.cfg, optimizer, stats, lr, preserve)


def packed_step(parts: list[tuple[Run, list[list[int]]]], forward: AnswerForward) -> dict[Run, Exception]:
    """One optimizer step of each run of a pack on its group of micro-batches: the runs' j-th micro-batches
    share one forward (AnswerForward.packed), and since each run's rows pass through its own units only, one
    backward of the summed losses gives every run the gradient it gets alone. Returns the runs that failed
    (a non-finite loss, ...): their losses are left out of the backward, and they take no step."""
    stats = {run: StepStats() for run, _ in parts}
    failed: dict[Run, Exception] = {}
    for j in range(max(len(group) for _, group in parts)):
        here = [(run, group[j], len(group)) for run, group in parts if j < len(group) and run not in failed]
        if not here:
            continue
        tokens = forward.packed([idx for _, idx, _ in here], [run.session.adapter for run, _, _ in here])
        total = None
        for (run, idx, share), run_tokens in zip(here, tokens):
            try:
                loss = accumulate(run_tokens, idx, run.method, stats[run], share)
            except Exception as e:  # noqa: BLE001 - this run fails; the pack goes on
                failed[run] = e
                continue
            if loss is not None:
                total = loss if total is None else total + loss
        if total is not None:
            total.backward()
    for run, _ in parts:
        if run not in failed:
            run.record(apply_update(run.session.cfg, run.optimizer, stats[run], run.lr), trace=False)
    failed.update(trace_pack([run for run, _ in parts if run not in failed and run.token_probs.due(run.state.steps)],
                             forward))
    return failed


def trace_pack(runs: list[Run], forward: AnswerForward) -> dict[Run, Exception]:
    """The token-probability rows (--log-token-probs) of the runs of a pack whose turn it is, in one teacher-forced
    pass; returns them all as failed if it fails."""
    if not runs:
        return {}
    try:
        stats = teacher_forced_pack(forward, [run.session.adapter for run in runs], runs[0].session.cfg.eval_batch_size)
    except Exception as e:  # noqa: BLE001 - these runs fail; the pack goes on
        return {run: e for run in runs}
    for run, run_stats in zip(runs, stats):
        run.token_probs.add(run.state.steps, run_stats)
    return {}


def train(
    cfg: TrainConfig,
    out: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    on_check: Callable[[Check], None] | None = None,
    also_evaluate: tuple[str | Path, ...] = (),
    loaded: LoadedModel | None = None,
    init_tensors: dict[str, torch.Tensor] | None = None,
    locality: bool | str | Path = False,
) -> RunMetrics:
    """Memorize cfg.data into a fresh adapter, save it in `out`, evaluate, and return the metrics.

    `also_evaluate`: further records files the trained adapter is evaluated on before the model
    is released (each into OUT/eval-<name>/, as `memlaw eval OUT --data FILE` would).
    `loaded`: a base model already loaded for cfg (a sweep worker's); the unit is detached from it
    at the end. `init_tensors`: start from these adapter weights (an earlier run's, to add records
    to it) instead of the fresh seeded init. `locality`: also measure what the unit changed away from
    the records (OUT/locality.json, memlaw.evaluate.locality); a path: on the unrelated prompts of that
    file (--locality-data) instead of the built-in ones. `out` is locked for the whole run (memlaw.lock): a
    second writer refuses.
    """
    run = RunDir(out)
    checked(cfg)  # the method's name and fields, before the model loads
    check_data_readable(cfg.data)
    with FolderLock(out):
        session = new_session(cfg, loaded)
        try:
            if init_tensors is not None:
                session.adapter.load_state_dict(init_tensors)
            config = session.cfg.to_dict()
            run.prepare(config, overwrite)
            records, encoded = session.load_data()
            forward = session.answer_forward(encoded)
            initial = initial_stats(session, forward)  # measured once, before training
            run.write_config(config)
            token_probs = TokenProbLog(session, forward, run, [r.id for r in records], initial)
            preserve = Preserver.for_session(session, encoded)  # after init_tensors: the projection applies to them too
            state = train_loop(session, forward, run, token_probs, progress, on_check, preserve)
            extra = preserve.summary() if preserve is not None else {}
            return finish_run(session, run, records, forward, initial, state, extra, also_evaluate, locality)
        finally:
            session.close()


def finish_run(session: Session, run: RunDir, records, forward: AnswerForward, initial: list[TokenStats],
               state: TrainState, extra_state: dict, also_evaluate: Sequence[str | Path] = (),
               locality: bool | str | Path = False) -> RunMetrics:
    """After training: save the adapter and train_state.json, evaluate (metrics.json last), then the further
    records files and locality asked for."""
    save_run(session, run, state, extra_state)
    metrics = evaluate_session(session, records, forward, run, state.summary(), initial=initial)
    evaluate_also(session, run, state, also_evaluate, metrics)
    if locality:
        from ..evaluate.locality import measure_locality

        prompts_file = None if locality is True else locality
        run.write_locality(measure_locality(session, prompts_file=prompts_file).to_dict())
    return metrics


def evaluate_also(session: Session, run: RunDir, state: TrainState, also_evaluate: Sequence[str | Path],
                  metrics: RunMetrics) -> None:
    """The trained adapter on further records files (a linear-rule cell's held-out pairs), each into
    RUN/eval-<name>/ with the run's own exact match beside its new one."""
    for data in also_evaluate:
        other_records, other_encoded = session.load_data(str(data))
        evaluate_session(session, other_records, session.answer_forward(other_encoded), run.eval_dir(data),
                         state.summary(), train_exact_match=metrics.exact_match)


def save_run(session: Session, run: RunDir, state: TrainState, extra_state: dict | None = None) -> None:
    """The trained adapter and train_state.json (before the evaluation, whose metrics.json marks the run finished)."""
    session.adapter.save(run.path)
    run.write_state({**state.summary(), **(extra_state or {})})


# ---------------------------------------------------------------------- packs
def train_pack(
    cfgs: Sequence[TrainConfig],
    outs: Sequence[str | Path],
    loaded: LoadedModel,
    also_evaluate: Sequence[tuple[str | Path, ...]] | None = None,
    overwrite: bool = False,
) -> list[RunMetrics | Exception]:
    """Train several runs that share their base model and data (one config.pack_key) in one pass: each run has
    its own unit (of any rank), method, optimizer, learning-rate schedule, clipping, dropout stream, stopper and
    folder, and its j-th micro-batch joins the others' in one forward (:func:`packed_step`); the prefix cache is
    built once, and the runs' token-probability rows and final evaluations are measured together. A run leaves
    the pack when it stops (saved, evaluated, its unit detached). Each run's result is what :func:`train`
    returns for it alone, within float tolerance, or the exception it failed with: a run that fails (in its
    setup, a non-finite loss) fails alone, the others finish."""
    pack = Pack(loaded, list(also_evaluate) if also_evaluate is not None else [()] * len(cfgs))
    with ExitStack() as locks:
        for k, (cfg, out) in enumerate(zip(cfgs, outs)):
            pack.join(k, cfg, out, overwrite, locks)
        try:
            while pack.members:
                parts = pack.next_steps()  # the runs whose schedules ended leave here
                if parts:
                    for run, _ in parts:  # a check put every unit in eval mode; each run's dropout on again
                        run.session.adapter.set_training(True)
                    failed = packed_step(parts, pack.forward)
                    if failed:
                        pack.leave(list(failed), failed)
        except Exception as e:  # noqa: BLE001 - the shared forward failed: every run still in the pack fails
            pack.leave(list(pack.members), {run: e for run in pack.members})
    return [pack.results[k] for k in range(len(cfgs))]


class Pack:
    """The runs of :func:`train_pack`: who is in, their shared data, and what each one's result is."""

    def __init__(self, loaded: LoadedModel, also_evaluate: list[tuple[str | Path, ...]]):
        self.loaded, self.also_evaluate = loaded, also_evaluate
        self.members: dict[Run, tuple[int, Iterator[list[list[int]]]]] = {}  # run -> (its index, its schedule)
        self.results: dict[int, RunMetrics | Exception] = {}
        self.records, self.forward, self.initial = None, None, None  # from the first run: one prefix cache

    def join(self, k: int, cfg: TrainConfig, out: str | Path, overwrite: bool, locks: ExitStack) -> None:
        """Set run k up (its folder locked for the pack's life); a run that cannot is failed with its exception."""
        try:
            check_data_readable(cfg.data)
            locks.enter_context(FolderLock(out))
            session = new_session(cfg, self.loaded, pack=True)
        except Exception as e:  # noqa: BLE001 - this run fails; the pack goes on
            self.results[k] = e
            return
        try:
            if self.members and pack_key(session.cfg) != pack_key(next(iter(self.members)).session.cfg):
                raise MemlawError("this run cannot join the pack: it differs in model, data, layers or batch size")
            rundir, config = RunDir(out), session.cfg.to_dict()
            rundir.prepare(config, overwrite)
            if self.forward is None:
                self.records, encoded = session.load_data()
                self.forward = session.answer_forward(encoded)
                self.initial = initial_stats(session, self.forward)
            rundir.write_config(config)
            token_probs = TokenProbLog(session, self.forward, rundir, [r.id for r in self.records], self.initial)
            run = Run(session, self.forward, rundir, token_probs, progress=False)
            self.members[run] = (k, run.schedule())
        except Exception as e:  # noqa: BLE001
            session.close()
            self.results[k] = e

    def next_steps(self) -> list[tuple[Run, list[list[int]]]]:
        """Each run's next optimizer step (its checks run with its own unit); the runs that stopped leave."""
        parts, stopped, errors = [], [], {}
        for run, (_, schedule) in self.members.items():
            try:
                with run.session.adapter.selected():
                    parts.append((run, next(schedule)))
            except StopIteration:
                stopped.append(run)
            except Exception as e:  # noqa: BLE001
                stopped.append(run)
                errors[run] = e
        if stopped:
            self.leave(stopped, errors)
        return parts

    def leave(self, runs: list[Run], errors: dict[Run, Exception]) -> None:
        """Runs out of the pack: the failed ones with their error, the others saved and evaluated together;
        their units detached (the others' stay)."""
        done = [run for run in runs if run not in errors]
        try:
            for run in done:
                run.bar.close()
                run.finish()
            errors.update(trace_pack([run for run in done if run.token_probs.due(run.state.steps, last=True)],
                                     self.forward))
            done = [run for run in done if run not in errors]
            for run in done:
                run.token_probs.save(run.state.steps)
                save_run(run.session, run.out, run.state)
            if done:
                metrics = evaluate_pack([run.session for run in done], self.records, self.forward,
                                        [run.out for run in done], [run.state.summary() for run in done], self.initial)
                for run, m in zip(done, metrics):
                    self.results[self.members[run][0]] = m
                    self._evaluate_also(run, m)
        except Exception as e:  # noqa: BLE001 - these runs fail; the pack goes on
            errors.update({run: e for run in done})
        for run in runs:
            if run in errors:
                self.results[self.members[run][0]] = errors[run]
            run.session.close()
            del self.members[run]

    def _evaluate_also(self, run: Run, metrics: RunMetrics) -> None:
        """:func:`evaluate_also` with the run's own unit selected."""
        with run.session.adapter.selected():
            evaluate_also(run.session, run.out, run.state, self.also_evaluate[self.members[run][0]], metrics)
