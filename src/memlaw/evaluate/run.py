"""Evaluate a run: teacher-forced stats, greedy recall, metrics.json and records.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import TrainConfig, from_mapping, read_yaml_mapping
from ..data.records import Record
from ..errors import MemlawError
from ..io import write_json, write_jsonl
from ..model.forward import AnswerForward
from ..session import Session, saved_session
from .recall import TokenStats, greedy_decode, summarise, teacher_forced


def initial_stats(s: Session, forward: AnswerForward) -> list[TokenStats]:
    """Teacher-forced statistics of the base model alone (the 'initial loss')."""
    with s.memory.disabled():
        return teacher_forced(forward, s.cfg.eval_batch_size)


def evaluate_session(
    s: Session,
    records: list[Record],
    forward: AnswerForward,
    out: Path,
    train_summary: dict,
    initial: list[TokenStats] | None = None,
    extra: dict | None = None,
) -> dict:
    """Evaluate the attached memory on `records`; write metrics.json and records.jsonl into `out`."""
    device, bs, encoded = s.loaded.device, s.cfg.eval_batch_size, forward.encoded
    initial = initial if initial is not None else initial_stats(s, forward)
    final = teacher_forced(forward, bs)
    generated = greedy_decode(s.memory.model, encoded, s.pad_id, bs, device)
    metrics, rows = summarise(encoded, final, initial, generated)
    params = s.memory.num_parameters()
    metrics.update(
        trainable_params=params,
        bits_per_param=metrics["bits_stored"] / params,
        steps=train_summary.get("steps"),
        train_seconds=train_summary.get("train_seconds"),
        stopped=train_summary.get("stopped"),
        interrupted=train_summary.get("interrupted", False),
        steps_to_certified=train_summary.get("steps_to_certified"),
        seconds_to_certified=train_summary.get("seconds_to_certified"),
        **(extra or {}),
    )
    tok = s.loaded.tokenizer
    full_rows = [
        {"id": r.id, "query": r.query, "target": r.target, "generated": tok.decode(row.pop("generated_ids")), **row}
        for r, row in zip(records, rows)
    ]
    write_jsonl(out / "records.jsonl", full_rows)
    write_json(out / "metrics.json", metrics)  # last: its presence marks the run as finished
    return metrics


def read_run_config(run_dir: Path) -> TrainConfig:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise MemlawError(f"{run_dir}: no config.yaml; not a memlaw run folder")
    return TrainConfig(**from_mapping(read_yaml_mapping(path), str(path))).validate()


def evaluate_run(run_dir: str | Path, data: str | None = None, out: str | Path | None = None) -> dict:
    """Re-evaluate a saved run, on its training data (default) or another records file."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    state_path = run_dir / "train_state.json"
    summary = json.loads(state_path.read_text(encoding="utf-8")) if state_path.is_file() else {}
    session = saved_session(run_dir, cfg)
    records, encoded = session.load_data(data)
    forward = session.answer_forward(encoded)
    if out is None:
        out = run_dir if data is None else run_dir / f"eval-{Path(data).stem}"
    extra = {}
    if data is not None and (run_dir / "metrics.json").is_file():  # memory EM beside EM on the other data
        extra["train_exact_match"] = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))["exact_match"]
    return evaluate_session(session, records, forward, Path(out), summary, extra=extra)
