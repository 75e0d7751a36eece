"""The demo pipeline (sweep -> fit -> analyze -> report) end to end, on the tiny model."""

from __future__ import annotations

import json

import yaml

from memlaw.cli import main
from memlaw.demo import demo_steps, run_demo


def test_demo_steps_are_the_user_commands(tmp_path):
    steps = demo_steps(tmp_path, "smollm2-demo", "local")
    assert [s[0] for s in steps] == ["sweep", "fit", "analyze", "report"]
    assert steps[0][1:3] == ["--preset", "smollm2-demo"]
    assert demo_steps(tmp_path, "grid.yaml", "ray")[0][1:2] == ["grid.yaml"]


def test_demo_pipeline_fits_a_law_and_writes_a_report(tiny_model_dir, tmp_path, capsys):
    grid = {
        "name": "tiny-demo", "model": str(tiny_model_dir), "benchmark": "phonebook", "methods": ["memft_ot"],
        "ranks": [1, 2, 4], "lengths": [20, 40], "seeds": [42], "layer": 1,
        "train": {"lr": 0.05, "epochs": 3, "batch_size": 4, "dropout": 0.0, "device": "cpu"},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid), encoding="utf-8")
    out = tmp_path / "study"
    law = run_demo(out, main, preset=str(path))

    stored = json.loads((out / "law" / "law.json").read_text())
    assert stored["combined"][0]["n"] == 6 == law["n"] and stored["holdout"] == "rank>=max"
    assert all(k in law["laws"]["paper"] for k in ("C", "alpha", "beta", "b", "r2", "ci", "aic"))
    assert set(law["laws"]) == set(law["holdout"]) == {"paper", "bounded"}
    assert all(s["n_heldout"] == 2 for s in law["holdout"].values())  # rank 4 at both lengths
    assert (out / "analysis" / "phase.json").is_file()
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6
    printed = capsys.readouterr().out
    assert "R² = " in printed and str((out / "report.html").resolve()) in printed
    assert "paper " in printed and "bounded " in printed and "held-out MAPE" in printed
