"""A real (tiny-model) study through sweep -> fit -> analyze -> report: every table and figure of the paper's
evidence renders from memlaw's own outputs, and the tables say what results.csv says."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from memlaw.cli import main
from memlaw.rundir import RunDir
from test_report import IMG, colors, embedded_pngs, expected_table, html_tables, table_cells

METHODS = ["sft", "memft_ot", "memft_sw"]


def run_study(model_dir, out, **grid) -> str:
    values = {
        "name": out.name, "model": str(model_dir), "methods": METHODS, "seeds": [42], "layer": 1,
        "train": {"lr": 0.1, "epochs": 2, "batch_size": 4, "dropout": 0.0, "device": "cpu", "log_token_probs": 2},
        **grid,
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    assert main(["fit", str(out), "--out", str(out / "law"), "--holdout", "rank>=max", "--bootstrap", "5"]) == 0
    assert main(["analyze", str(out)]) == 0
    assert main(["report", str(out)]) == 0
    return (out / "report.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def studies(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    phonebook = run_study(tiny_model_dir, root / "pb", benchmark="phonebook", ranks=[1, 2, 4], lengths=[20, 40])
    rule = run_study(tiny_model_dir, root / "rule", benchmark="linear-rule", ranks=[1, 2], lengths=None, records=[6, 12],
                     heldout=5)
    return root, phonebook, rule


def section_of(html: str, title: str) -> str:
    start = html.index(f"<h2>{title}</h2>")
    end = html.find("<h2>", start + 1)
    return html[start: end if end > 0 else None]


def test_every_figure_renders_and_says_something(studies):
    _, *pages = studies
    for html in pages:
        images = embedded_pngs(html)
        assert len(images) == html.count(IMG) >= 12
        for image in images:
            assert image.shape[0] > 150 and image.shape[1] > 250 and colors(image) > 10


def test_the_paper_sections_are_there(studies):
    root, phonebook, rule = studies
    for title in ("Fitted parameters", "Exact match per rank and method", "Per-position probability grids",
                  "Stubborn tokens over training", "Phase transition"):
        assert IMG in section_of(phonebook, title) or "<table>" in section_of(phonebook, title), title
    assert IMG in section_of(phonebook, "Stubborn tokens over training")  # every cell logged token probabilities
    assert "free-run token accuracy heatmaps" in phonebook
    assert IMG in section_of(rule, "Stubborn tokens over training")
    trace = RunDir(root / "pb" / "cells" / "phonebook-sft-r1-L20-s42").read_token_probs()
    assert list(trace.steps[:2]) == [0, 2]


def test_tables_equal_the_results(studies):
    root, phonebook, rule = studies
    for folder, html, section, columns in (
        ("pb", phonebook, "Exact match per rank and method", ("exact_match", "token_accuracy")),
        ("rule", rule, "Linear rule: memorization and generalization", ("exact_match", "heldout_exact_match")),
    ):
        results = pd.read_csv(root / folder / "results.csv")
        tables = [t for t in html_tables(html) if t["section"] == section]
        assert len(tables) == 2
        for t in tables:
            bench, length = t["caption"].split(" · ℓ = ")
            assert table_cells(t) == expected_table(results, bench, int(length), columns)


def test_law_table_has_both_forms_and_held_out_errors(studies):
    root, phonebook, _ = studies
    law = json.loads((root / "pb" / "law" / "law.json").read_text())
    [params] = [t for t in html_tables(phonebook) if t["section"] == "Fitted parameters" and t["header"][:2] == ["group", "form"]]
    assert "held out (rank>=max): n" in params["header"]
    assert "<p>Every group: model " in phonebook and ", benchmark phonebook.</p>" in phonebook
    shown = {(row[0], row[1].rstrip(" *")): row for row in params["rows"]}
    for group in law["groups"]:
        for form in ("paper", "bounded"):
            label = group["key"]["method"]  # one model and benchmark: said once above the table
            row = shown[(label, form)]
            held = group["holdout"][form]
            assert row[-3] == (held.get("error") or str(held["n_heldout"]))
            if "mape" in held:
                assert row[-2] == f"{held['mape']:.2f}%"
    by = json.loads((root / "pb" / "analysis" / "phase.json").read_text())["spearman_by"]
    assert sorted(e["method"] for e in by) == sorted(METHODS)
