"""Linear-rule benchmark: data, and memory vs generalization EM from `memlaw eval`."""

from __future__ import annotations

import json
import re

import pytest

from memlaw.cli import main
from memlaw.data.linear_rule import generate_linear_rule, rule
from memlaw.errors import MemlawError


def test_pairs_follow_the_rule_and_are_disjoint():
    train, heldout = generate_linear_rule(200, 50, seed=3)
    assert len(train) == 200 and len(heldout) == 50
    assert not {r["query"] for r in train} & {r["query"] for r in heldout}
    for r in train + heldout:
        x, y = map(int, re.fullmatch(r"f\((\d+), (\d+)\) =", r["query"]).groups())
        assert r["target"] == str(3 * x + 5 * y + 7) == str(rule(x, y))
    assert generate_linear_rule(200, 50, seed=3) == (train, heldout)
    assert generate_linear_rule(200, 50, seed=4) != (train, heldout)


def test_too_many_pairs_is_a_user_error():
    with pytest.raises(MemlawError, match="distinct"):
        generate_linear_rule(90, 20, max_value=9)


def test_eval_reports_memory_and_generalization(tiny_model_dir, tmp_path, capsys):
    tr, ho = tmp_path / "train.jsonl", tmp_path / "heldout.jsonl"
    assert main(["data", "linear-rule", "--train", "6", "--heldout", "4", "--max-value", "9",
                 "--out-train", str(tr), "--out-heldout", str(ho)]) == 0
    run = tmp_path / "run"
    assert main(["train", "--model", str(tiny_model_dir), "--data", str(tr), "--out", str(run), "--quiet",
                 "--layer", "1", "--rank", "4", "--lr", "0.1", "--dropout", "0", "--batch-size", "3",
                 "--epochs", "5"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(ho)]) == 0
    out = capsys.readouterr().out
    trained = json.loads((run / "metrics.json").read_text())
    held = json.loads((run / "eval-heldout" / "metrics.json").read_text())
    assert held["n_records"] == 4 and held["train_exact_match"] == trained["exact_match"]
    assert "memory EM (training data)" in out and "generalization" in out
