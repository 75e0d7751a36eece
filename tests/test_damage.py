"""Damaged files never crash a command (issue 17): a fuzz over memlaw's own artefacts.

Every artefact type is damaged in several ways (truncated at a few points including 0 bytes,
bytes flipped, the wrong JSON/YAML type, a key missing, a tensor of the wrong shape) and every
command that reads it is run on the damaged copy. Each must exit 0 having recovered (a sweep
re-runs the cell, a results table is rebuilt, an analysis recomputed) or exit 2 with one error
line that names the damaged file; never a traceback, and never load a wrong-shape adapter.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import write_records
from memlaw.cli import main

PHONES = [{"id": i, "query": f"Name {c}:", "target": t} for i, (c, t) in enumerate(zip("ABCD", ["4821", "90", "377", "15"]))]
NEW = [{"id": 9, "query": "Name Z:", "target": "62"}]
CASES: list[tuple[str, str, str]] = []  # (artefact, damage, command) tried, for the count in the summary


# ---------------------------------------------------------------------- damages
def truncate(fraction: float):
    def damage(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])
    damage.__name__ = f"truncate-{fraction:g}"
    return damage


def truncate_to(n: int):
    def damage(path: Path) -> None:
        path.write_bytes(path.read_bytes()[:n])
    damage.__name__ = f"truncate-to-{n}"
    return damage


def flip(path: Path) -> None:
    """XOR a run of bytes in the middle (invalid UTF-8 in text files, a broken header or payload in binaries)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 3
    for i in range(start, min(start + 16, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def flip_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(8, min(24, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def wrong_type(path: Path) -> None:
    """Valid syntax, wrong structure: a list where an object/mapping/row is expected."""
    text = {".json": "[1, 2, 3]\n", ".jsonl": "[1, 2, 3]\n", ".yaml": "- 1\n- 2\n", ".csv": "a;b\n1;2\n"}[path.suffix]
    path.write_text(text, encoding="utf-8")


def missing_key(path: Path) -> None:
    """Drop the first key of a JSON object / YAML mapping / every JSONL row."""
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "target"}) + "\n" for r in rows))
    elif path.suffix == ".yaml":
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
        values.pop(next(iter(values)))
        path.write_text(yaml.safe_dump(values), encoding="utf-8")
    else:
        values = json.loads(path.read_text(encoding="utf-8"))
        first = next(iter(values))
        path.write_text(json.dumps({k: v for k, v in values.items() if k != first}), encoding="utf-8")


def cut_between_keys(path: Path) -> None:
    """A YAML mapping cut short at a line boundary halfway: it still parses, its later keys are gone (defaults fill
    them in). Where a plain truncation cuts depends on the file's length, i.e. on the paths it holds."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    keys = [i for i, line in enumerate(lines) if line[:1].isalpha()]
    path.write_text("".join(lines[: keys[len(keys) // 2]]), encoding="utf-8")


def wrong_value(path: Path) -> None:
    """A field of the wrong type: the first numeric field of a JSON object as a string."""
    values = json.loads(path.read_text(encoding="utf-8"))
    key = next(k for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    values[key] = "many"
    path.write_text(json.dumps(values), encoding="utf-8")


def wrong_shape(path: Path) -> None:
    """The same tensor names, one tensor with one more row: it must not load (copy_ could broadcast it)."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    t = tensors[name]
    tensors[name] = torch.cat([t, t[:1]], dim=0)
    save_file(tensors, str(path), metadata={"format": "memlaw"})


def non_finite(path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    name = sorted(tensors)[-1]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(path), metadata={"format": "memlaw"})


TEXT = [truncate_to(0), truncate(0.5), flip]
JSON = [*TEXT, wrong_type, missing_key, wrong_value]
SAFETENSORS = [truncate_to(0), truncate_to(10), truncate(0.5), flip_header, wrong_shape, non_finite]


# ---------------------------------------------------------------------- pristine artefacts
@pytest.fixture(scope="module")
def pristine(tiny_model_dir, tmp_path_factory) -> dict:
    """A memorized run, a finished sweep with its analysis, and a law file; copied for every case."""
    from memlaw.law.groups import fit_groups
    from memlaw.law.lawfile import write_law
    from test_law import law_points

    root = tmp_path_factory.mktemp("pristine")
    data = write_records(root / "phones.jsonl", PHONES)
    write_records(root / "new.jsonl", NEW)
    assert main(["memorize", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(root / "run"), "--layer", "1",
                 "--rank", "4", "--lr", "0.05", "--device", "cpu", "--no-locality"]) == 0
    grid = {"name": "tiny", "model": str(tiny_model_dir), "benchmark": "phonebook", "methods": ["sft"], "ranks": [1, 2, 4],
            "lengths": [20, 40], "seeds": [42], "layer": 1,
            "train": {"lr": 0.1, "epochs": 2, "batch_size": 4, "dropout": 0.0, "device": "cpu"}}
    (root / "grid.yaml").write_text(yaml.safe_dump(grid), encoding="utf-8")
    assert main(["sweep", str(root / "grid.yaml"), "--out", str(root / "sweep")]) == 0
    assert main(["analyze", str(root / "sweep")]) == 0
    rank, length, y = law_points(seed=1, seeds=1)
    table = pd.DataFrame({"model": "m", "benchmark": "phonebook", "ratio": None, "method": "sft", "rank": rank,
                          "length": length, "delta_loss": y, "status": "ok"})
    write_law(root / "law.json", fit_groups(table, n_bootstrap=2))
    return {"root": root, "cell": "phonebook-sft-r2-L40-s42"}


def run_case(pristine, tmp_path, capsys, artefact: str, damage, argv: list[str]) -> tuple[int, str]:
    """Copy the pristine artefacts, damage one file, run the command; check the contract; return (rc, stderr)."""
    root = tmp_path / "case"
    shutil.copytree(pristine["root"], root)
    fill = {"root": root, "run": root / "run", "sweep": root / "sweep", "cell": root / "sweep" / "cells" / pristine["cell"]}
    target = Path(artefact.format(**fill))
    assert target.is_file(), target
    damage(target)
    capsys.readouterr()
    CASES.append((target.name, damage.__name__, argv[0]))
    try:
        rc = main([a.format(**fill) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("memlaw: error:")]
    assert "Traceback" not in err, err
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        assert len(errors) == 1 and len(err.strip().splitlines()) == 1, err
        assert target.name in errors[0], (target.name, errors[0])
    return rc, err


RUN_COMMANDS = {
    "eval": ["eval", "{run}", "--no-locality", "--out", "{root}/eval"],
    "ask": ["ask", "{run}", "Name B:"],
    "export": ["export", "{run}", "--out", "{root}/export"],
    "into": ["memorize", "--into", "{run}", "--data", "{root}/new.jsonl", "--no-locality"],
}
RUN_ARTEFACTS = {
    "adapter.safetensors": SAFETENSORS,
    "adapter.json": JSON,
    "config.yaml": [*TEXT, wrong_type, missing_key, cut_between_keys],
    "metrics.json": JSON,
    "records.jsonl": [*TEXT, wrong_type, missing_key],
    "train_state.json": JSON,
    "train_log.csv": [flip],  # read by no command (written for the user): one damage shows that
}


@pytest.mark.parametrize("artefact", sorted(RUN_ARTEFACTS))
@pytest.mark.parametrize("command", sorted(RUN_COMMANDS))
def test_run_artefacts(pristine, tmp_path, capsys, artefact, command):
    damages = RUN_ARTEFACTS[artefact]
    if command == "into" and damages is JSON:  # `into` trains after each recovery: every other damage, both kinds
        damages = damages[::2]
    for damage in damages:
        rc, err = run_case(pristine, tmp_path / damage.__name__, capsys, "{run}/" + artefact, damage, RUN_COMMANDS[command])
        if damage in (wrong_shape, non_finite):  # never loaded: the command stops
            assert rc == 2 and "damaged: tensor" in err


# ---------------------------------------------------------------------- sweep artefacts
def rows_once(sweep: Path) -> pd.DataFrame:
    frame = pd.read_parquet(sweep / "results.parquet")
    assert len(frame) == 6 and frame["cell"].is_unique and frame["status"].eq("ok").all()
    return frame


CELL_ARTEFACTS = {
    "metrics.json": JSON, "config.yaml": [*TEXT, wrong_type], "records.jsonl": [*TEXT, wrong_type, missing_key],
    "adapter.json": [truncate_to(0), flip, wrong_value], "adapter.safetensors": [truncate_to(0), truncate(0.5), wrong_shape],
}


@pytest.mark.parametrize("artefact", sorted(CELL_ARTEFACTS))
def test_a_sweep_resumes_over_a_damaged_cell(pristine, tmp_path, capsys, artefact):
    """The damaged cell is moved aside, run again, and the table has one row per cell."""
    for damage in CELL_ARTEFACTS[artefact]:
        case = tmp_path / damage.__name__
        rc, err = run_case(pristine, case, capsys, "{cell}/" + artefact, damage,
                           ["sweep", "{root}/grid.yaml", "--out", "{sweep}"])
        assert rc == 0 and f"cell {pristine['cell']} is damaged" in err and artefact in err
        sweep = case / "case" / "sweep"
        rows_once(sweep)
        assert len(list((sweep / "cells").glob(f"{pristine['cell']}.damaged-*"))) == 1
        json.loads((sweep / "cells" / pristine["cell"] / "metrics.json").read_text())  # re-run: readable again


SWEEP_COMMANDS = {
    "sweep": ["sweep", "{root}/grid.yaml", "--out", "{sweep}"],
    "fit": ["fit", "{sweep}", "--bootstrap", "0"],  # the fit itself is not under test: no intervals
    "analyze": ["analyze", "{sweep}"],
}


@pytest.mark.parametrize("artefact", ["results.parquet", "results.csv", "grid.yaml"])
@pytest.mark.parametrize("command", sorted(SWEEP_COMMANDS))
def test_sweep_tables(pristine, tmp_path, capsys, artefact, command):
    damages = [*TEXT, wrong_type] if artefact != "results.parquet" else [truncate_to(0), truncate(0.5), flip_header]
    if command == "fit" and artefact != "results.parquet":  # fit reads only the table: one damage says it
        damages = damages[:1]
    for damage in damages:
        rc, err = run_case(pristine, tmp_path / damage.__name__, capsys, "{sweep}/" + artefact, damage, SWEEP_COMMANDS[command])
        if artefact == "results.parquet":  # rebuilt from the cells by every command
            assert rc == 0 and (command == "sweep" or "rebuilt the results from 6 cell folders" in err)
            rows_once(tmp_path / damage.__name__ / "case" / "sweep")


def test_report_recovers_from_damaged_tables_and_analysis(pristine, tmp_path, capsys):
    """Report is the slow command: one run with a damaged table, one with all three analysis files damaged."""
    for case, damages in (("table", [("results.parquet", truncate(0.5))]),
                          ("analysis", [("analysis/phase.json", missing_key), ("analysis/records.csv", flip),
                                        ("analysis/prob_grid.csv", wrong_type)])):
        root = tmp_path / case
        shutil.copytree(pristine["root"], root)
        for artefact, damage in damages:
            damage(root / "sweep" / artefact)
            CASES.append((Path(artefact).name, damage.__name__, "report"))
        capsys.readouterr()
        rc = main(["report", str(root / "sweep"), "--law", str(root / "law.json")])
        err = capsys.readouterr().err
        assert rc == 0 and "Traceback" not in err and "memlaw: error" not in err, err
        notes = [line for line in err.splitlines() if line.startswith("note:")]
        assert notes, err
        if case == "table":
            assert "rebuilt the results from 6 cell folders" in notes[0]
            rows_once(root / "sweep")
        assert (root / "sweep" / "report.html").stat().st_size > 0


@pytest.mark.parametrize("command", ["plan", "report"])
def test_law_file(pristine, tmp_path, capsys, command):
    argv = {"plan": ["plan", "--law", "{root}/law.json", "--length", "1000", "--delta-loss", "0.1"],
            "report": ["report", "{sweep}", "--law", "{root}/law.json"]}[command]
    for damage in (*TEXT, wrong_type, missing_key):
        rc, _ = run_case(pristine, tmp_path / damage.__name__, capsys, "{root}/law.json", damage, argv)
        assert rc == 2


def test_zz_case_count():
    """How many (artefact, damage, command) cases the tests above tried (printed with -s; in the issue's note)."""
    print(f"\ndamage fuzz: {len(CASES)} (artefact, damage, command) cases, {len({c[0] for c in CASES})} artefact types")
    assert len(CASES) == 0 or len(CASES) >= 150
