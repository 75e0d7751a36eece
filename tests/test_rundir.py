"""The run folder's owner: file names in one module, RunMetrics as the one list of metric keys."""

from __future__ import annotations

import ast
import json
from dataclasses import fields
from pathlib import Path

import pytest

import memlaw
from memlaw.errors import MemlawError
from memlaw.rundir import METRICS_FILE, RunDir, RunMetrics
from memlaw.sweep.results import COLUMNS

SRC = Path(memlaw.__file__).parent


def string_literals(path: Path) -> set[str]:
    """Every string constant of a module except docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings}


def test_run_folder_file_names_live_in_rundir_only():
    names = {"metrics.json", "config.yaml", "records.jsonl", "train_state.json", "train_log.csv", "error.json",
             "token_probs.safetensors"}
    holders = {p.relative_to(SRC).as_posix(): names & string_literals(p) for p in SRC.rglob("*.py")}
    assert {k: v for k, v in holders.items() if v} == {"rundir.py": names}


def metrics(**changes) -> RunMetrics:
    values = dict(n_records=2, target_tokens=9, exact_match=0.5, token_accuracy=0.75, free_run_token_accuracy=0.5,
                  initial_loss=3.0, final_loss=1.0, delta_loss=2.0, initial_answer_loss=3.2,
                  final_answer_loss=1.2, delta_answer_loss=2.0, stubborn_tokens=1, certified_fraction=0.5,
                  certificate_violations=0, loss_bits=25.9, trainable_params=128, bits_per_param=0.2)
    return RunMetrics(**{**values, **changes})


def test_metrics_round_trip_through_the_run_folder(tmp_path):
    run = RunDir(tmp_path / "run")
    m = metrics(steps=7, stopped="certified")
    run.write_metrics(m)
    assert json.loads(run.metrics_path.read_text()) == m.to_dict()
    assert run.read_metrics() == m
    assert run.metrics_path.name == METRICS_FILE


def test_a_metrics_file_without_a_required_key_is_named(tmp_path):
    run = RunDir(tmp_path)
    values = metrics().to_dict()
    del values["exact_match"]
    run.metrics_path.write_text(json.dumps(values))
    with pytest.raises(MemlawError, match=rf"{METRICS_FILE}.*exact_match"):
        run.read_metrics()


def test_results_table_and_cli_table_come_from_run_metrics():
    columns = RunMetrics.columns()
    assert list(columns) == [k for k in COLUMNS if k in columns]  # the results table carries them in order
    assert columns["n_records"] == "Int64" and columns["exact_match"] == "float64" and columns["stopped"] == "string"
    assert "interrupted" not in columns and "train_exact_match" not in columns
    shown = RunMetrics.shown()
    assert shown[0] == "n_records" and "certificate_violations" not in shown
    lines = metrics(steps=3).table()
    assert len(lines) == len(shown) and lines[2].split() == ["exact_match", "0.5000"]
    assert set(shown) <= {f.name for f in fields(RunMetrics)}


def test_prepare_refuses_a_different_finished_run_and_clears_stale_results(tmp_path):
    run = RunDir(tmp_path / "run")
    run.prepare({"rank": 2}, overwrite=False)
    run.write_config({"rank": 2})
    run.write_metrics(metrics())
    with pytest.raises(MemlawError, match="different finished run"):
        run.prepare({"rank": 3}, overwrite=False)
    assert run.metrics_path.is_file()
    run.prepare({"rank": 2}, overwrite=False)  # the same run again: allowed, old results removed
    assert not run.metrics_path.exists() and run.config_path.is_file()
