"""Evaluate a run: teacher-forced stats, greedy recall, metrics.json and records.jsonl."""

from __future__ import annotations

from pathlib import Path

from ..data.information import record_information
from ..data.records import Record
from ..errors import MemlawError
from ..model.forward import AnswerForward
from ..rundir import RunDir, RunMetrics
from ..session import Session, saved_session
from .recall import TokenStats, greedy_decode, greedy_decode_pack, summarize, teacher_forced, teacher_forced_pack


def initial_stats(session: Session, forward: AnswerForward) -> list[TokenStats]:
    """Teacher-forced statistics of the base model alone (the 'initial loss')."""
    with session.adapter.disabled():
        return teacher_forced(forward, session.cfg.eval_batch_size)


def evaluate_session(
    session: Session,
    records: list[Record],
    forward: AnswerForward,
    out: RunDir,
    train_summary: dict,
    initial: list[TokenStats] | None = None,
    train_exact_match: float | None = None,
) -> RunMetrics:
    """Evaluate the attached adapter on `records`; write metrics.json and records.jsonl into `out`."""
    device, bs, encoded = session.loaded.device, session.cfg.eval_batch_size, forward.encoded
    initial = initial if initial is not None else initial_stats(session, forward)
    final = teacher_forced(forward, bs)
    generated = greedy_decode(session.adapter.model, encoded, session.pad_id, bs, device)
    return write_evaluation(session, records, encoded, initial, final, generated, out, train_summary, train_exact_match)


def evaluate_pack(sessions: list[Session], records: list[Record], forward: AnswerForward, outs: list[RunDir],
                  train_summaries: list[dict], initial: list[TokenStats]) -> list[RunMetrics]:
    """:func:`evaluate_session` of several runs of a pack (memlaw.train.trainer.train_pack) on their shared records,
    in one teacher-forced pass and one generation: each run's copy of a batch through its own units."""
    first = sessions[0]
    adapters, bs = [s.adapter for s in sessions], first.cfg.eval_batch_size
    finals = teacher_forced_pack(forward, adapters, bs)
    generated = greedy_decode_pack(first.adapter.model, forward.encoded, first.pad_id, bs, first.loaded.device, adapters)
    return [write_evaluation(s, records, forward.encoded, initial, final, gen, out, summary)
            for s, final, gen, out, summary in zip(sessions, finals, generated, outs, train_summaries)]


def write_evaluation(session: Session, records: list[Record], encoded, initial: list[TokenStats],
                     final: list[TokenStats], generated: list[list[int]], out: RunDir, train_summary: dict,
                     train_exact_match: float | None = None) -> RunMetrics:
    """The metrics of one evaluation, from its teacher-forced statistics and generations; metrics.json (last: its
    presence marks the run as finished) and records.jsonl written into `out`."""
    info = record_information(records, [s.answer_losses for s in initial])
    recall, rows = summarize(encoded, final, initial, generated, info)
    params = session.adapter.num_parameters()
    metrics = RunMetrics(
        **recall,
        trainable_params=params,
        bits_per_param=recall["bits_memorized"] / params,
        steps=train_summary.get("steps"),
        train_seconds=train_summary.get("train_seconds"),
        stopped=train_summary.get("stopped"),
        interrupted=train_summary.get("interrupted", False),
        steps_to_certified=train_summary.get("steps_to_certified"),
        seconds_to_certified=train_summary.get("seconds_to_certified"),
        train_exact_match=train_exact_match,
    )
    tok = session.loaded.tokenizer
    out.write_records(
        {"id": r.id, "query": r.query, "target": r.target, "generated": tok.decode(row.pop("generated_ids")), **row}
        for r, row in zip(records, rows)
    )
    out.write_metrics(metrics)
    return metrics


def evaluation_dir(run_dir: str | Path, data: str | None = None, out: str | Path | None = None,
                   dtype: str | None = None) -> RunDir:
    """Where `memlaw eval` writes: `out`, else the run itself, or RUN/eval-<data> for another records file;
    in another dtype than the run's, RUN/eval-<dtype> (or RUN/eval-<data>-<dtype>), never over the run's own."""
    run = RunDir(run_dir)
    if out is not None:
        return RunDir(out)
    other_dtype = dtype is not None and dtype != run.read_config().dtype
    if data is None:
        return RunDir(run.path / f"eval-{dtype}") if other_dtype else run
    target = run.eval_dir(data)
    return RunDir(f"{target.path}-{dtype}") if other_dtype else target


def evaluate_run(run_dir: str | Path, data: str | None = None, out: str | Path | None = None,
                 locality: bool | str | Path = False, dtype: str | None = None) -> RunMetrics:
    """Re-evaluate a saved run, on its training data (default) or another records file; with `locality`,
    also what the unit changed away from the records (locality.json beside the metrics). `dtype`: load the
    base model in this dtype instead of the run's (e.g. float32 for a run trained in bfloat16: does its
    certificate still hold where the memory will be used?). `locality` a path: the unrelated prompts of that
    file (--locality-data) instead of the built-in ones."""
    from ..config import DTYPES, replace

    run = RunDir(run_dir)
    cfg = run.read_config()
    if dtype is not None:
        if dtype not in DTYPES or dtype == "auto":
            raise MemlawError(f"--dtype: choose from {', '.join(d for d in DTYPES if d != 'auto')}, got {dtype!r}")
        cfg = replace(cfg, dtype=dtype)
    session = saved_session(run.path, cfg)
    records, encoded = session.load_data(data)
    forward = session.answer_forward(encoded)
    target = evaluation_dir(run_dir, data, out, dtype)
    # memory EM (the run's own data) beside the EM on the other data
    train_em = run.read_metrics().exact_match if data is not None and run.metrics_path.is_file() else None
    if data is None and target.path != run.path:
        target.path.mkdir(parents=True, exist_ok=True)
        target.write_config({**cfg.to_dict(), "dtype-reason": "given (memlaw eval --dtype)"})
    metrics = evaluate_session(session, records, forward, target, run.read_state(), train_exact_match=train_em)
    if locality:
        from .locality import measure_locality

        target.write_locality(measure_locality(session, prompts_file=None if locality is True else locality).to_dict())
    return metrics
