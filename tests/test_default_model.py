"""Integration: the embedded default model (SmolLM2-135M-Instruct) memorizes a PhoneBook at rank 4."""

from __future__ import annotations

import json

import pytest

from memlaw.cli import main

pytestmark = pytest.mark.slow


def test_default_model_memorizes_phonebook_at_rank_4(tmp_path, capsys):
    data = tmp_path / "pb.jsonl"
    assert main(["data", "phonebook", "--records", "10", "--out", str(data)]) == 0
    run = tmp_path / "run"
    # A CPU-sized budget: 160 optimizer steps; no dropout and a higher lr than the 8B reference. (With
    # the reference prompt each record also trains its 2-token end-of-turn suffix: 100 steps stored 8 of 10.)
    rc = main(["train", "--data", str(data), "--out", str(run), "--rank", "4", "--lr", "0.05",
               "--dropout", "0", "--batch-size", "5", "--epochs", "80", "--quiet"])
    assert rc == 0
    (run / "metrics.json").unlink()
    assert main(["eval", str(run)]) == 0  # a fresh load of base model + saved adapter
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_records"] == 10 and metrics["target_tokens"] == 100
    assert metrics["exact_match"] == 1.0
    rows = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    assert all(r["exact"] for r in rows if r["certified"])  # the certificate's guarantee
    assert all(r["generated"] == r["target"] for r in rows)
    out = capsys.readouterr().out
    assert "exact_match              1.0000" in out
