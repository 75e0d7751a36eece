"""MemFT methods and certified early stopping on a tiny model."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from safetensors.torch import load_file

from conftest import write_records
from memlaw.cli import main
from memlaw.data.encoding import Encoded
from memlaw.evaluate.recall import TokenStats, summarize

RECORDS = [
    {"id": 1, "query": "Ann Lee:", "target": "4821"},
    {"id": 2, "query": "Bob Ray:", "target": "90"},
    {"id": 3, "query": "Cy Wu:", "target": "377"},
    {"id": 4, "query": "Di Fox:", "target": "15"},
]


def args(model_dir, data, out, *extra):
    return ["train", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--quiet",
            "--layer", "1", "--rank", "4", "--lr", "0.1", "--dropout", "0", "--batch-size", "2", *extra]


def log_rows(run):
    with open(run / "train_log.csv") as f:
        return list(csv.DictReader(f))


def metrics(run):
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture
def data(tmp_path):
    return write_records(tmp_path / "records.jsonl", RECORDS)


def test_certified_stopping_halts_and_greedy_reproduces(tiny_model_dir, data, tmp_path):
    run = tmp_path / "run"
    assert main(args(tiny_model_dir, data, run, "--epochs", "400", "--stop-when", "certified")) == 0
    m = metrics(run)
    assert m["stopped"] == "certified"
    assert m["steps_to_certified"] == m["steps"] < 400 * 2  # halted long before the epoch budget
    assert m["seconds_to_certified"] is not None and m["seconds_to_certified"] <= m["train_seconds"]
    assert m["certified_fraction"] == 1.0 and m["exact_match"] == 1.0 and m["certificate_violations"] == 0
    rows = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    assert all(r["certified"] and r["generated"] == r["target"] for r in rows)
    # the previous epoch was not yet certified: stopping happened at the first certified check
    assert len({r["epoch"] for r in log_rows(run)}) == m["steps"] // 2


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_certificate_checked_only_after_clean_epochs(tiny_model_dir, data, tmp_path, dropout):
    """Without dropout an epoch whose training pass met a stubborn token is not checked; with dropout every one is."""
    from memlaw.config import TrainConfig
    from memlaw.train.trainer import train

    cfg = TrainConfig(data=str(data), model=str(tiny_model_dir), layer=[1], rank=4, lr=0.1, dropout=dropout,
                      batch_size=2, epochs=400, stop_when="certified").validate()
    checks = []
    m = train(cfg, tmp_path / "run", progress=False, on_check=checks.append)
    assert m.stopped == "certified" and m.certified_fraction == 1.0 and m.exact_match == 1.0
    stubborn = {}
    for row in log_rows(tmp_path / "run"):
        stubborn[int(row["epoch"])] = stubborn.get(int(row["epoch"]), 0) + int(row["stubborn_tokens"])
    checked = [c.epoch for c in checks]
    assert checks[-1].done and not any(c.done for c in checks[:-1])
    if dropout == 0:
        assert checked == [e for e, n in sorted(stubborn.items()) if n == 0]
        assert len(checked) < len(stubborn) / 2  # most epochs skip the check
    else:
        assert checked == sorted(stubborn)


def test_check_every_n_steps(tiny_model_dir, data, tmp_path):
    run = tmp_path / "run"
    assert main(args(tiny_model_dir, data, run, "--epochs", "400", "--stop-when", "certified", "--check-every", "3")) == 0
    m = metrics(run)
    assert m["stopped"] == "certified" and m["steps"] % 3 == 0 and m["certified_fraction"] == 1.0


def test_certificate_violation_is_counted():
    """A certified record that greedy decoding does not reproduce must show up as a violation."""
    enc = [Encoded([1, 2], [5, 6]), Encoded([1, 3], [7])]
    confident = TokenStats(losses=np.array([0.1, 0.2]), correct=np.array([True, True]))
    other = TokenStats(losses=np.array([0.1]), correct=np.array([True]))
    m, rows = summarize(enc, [confident, other], [confident, other], generated=[[5, 9], [7]])
    assert rows[0]["certified"] and not rows[0]["exact"] and rows[0]["first_failure"] == 1
    assert m["certificate_violations"] == 1


def test_memft_ot_masks_recalled_tokens(tiny_model_dir, data, tmp_path):
    run = tmp_path / "ot"
    assert main(args(tiny_model_dir, data, run, "--epochs", "80", "--method", "memft_ot")) == 0
    rows = log_rows(run)
    assert int(rows[0]["masked_tokens"]) == 0  # at step 0 every token is below p = 0.5
    assert any(int(r["masked_tokens"]) > 0 for r in rows)  # later, recalled tokens stop receiving gradient
    assert metrics(run)["exact_match"] == 1.0


def test_zero_bp_skips_update(tiny_model_dir, data, tmp_path):
    """--zero-bp, with a threshold no token exceeds: every step has zero weight: no backward, adapter unchanged."""
    run = tmp_path / "zero"
    assert main(args(tiny_model_dir, data, run, "--epochs", "3", "--method", "memft_ot", "--threshold-p", "1e-12",
                     "--zero-bp")) == 0
    rows = log_rows(run)
    assert rows and all(r["updated"] == "0" and r["active_tokens"] == "0" for r in rows)
    adapter = load_file(str(run / "adapter.safetensors"))
    assert all(float(t.abs().sum()) == 0 for k, t in adapter.items() if k.endswith(".B"))  # B still zero
    assert metrics(run)["final_loss"] == pytest.approx(metrics(run)["initial_loss"])


def test_memft_ot_without_hard_tokens_trains_on_the_plain_mean(tiny_model_dir, data, tmp_path):
    """The reference's memft_ot (the default): a step with no token above the threshold keeps training,
    on the plain mean over all target tokens."""
    run = tmp_path / "fallback"
    assert main(args(tiny_model_dir, data, run, "--epochs", "3", "--method", "memft_ot", "--threshold-p", "1e-12")) == 0
    rows = log_rows(run)
    assert rows and all(r["updated"] == "1" and r["masked_tokens"] == "0" for r in rows)
    assert metrics(run)["final_loss"] < metrics(run)["initial_loss"]


def test_memft_sw_curriculum_on_many_records(tiny_model_dir, data, tmp_path):
    run = tmp_path / "sw"
    rc = main(args(tiny_model_dir, data, run, "--epochs", "10", "--method", "memft_sw", "--batch-size", "1",
                   "--curriculum-ratios", "0.5,1.0", "--curriculum-boundaries", "4,10"))
    assert rc == 0
    per_epoch = {}
    for r in log_rows(run):
        per_epoch[int(r["epoch"])] = per_epoch.get(int(r["epoch"]), 0) + 1
    assert [per_epoch[e] for e in range(10)] == [2] * 4 + [4] * 6  # half the records first, then all
    assert all(r["anchor"] == "" for r in log_rows(run))


def test_memft_sw_sliding_window_on_one_long_record(tiny_model_dir, tmp_path):
    data = write_records(tmp_path / "long.jsonl", [{"query": "Recite:", "target": "the quick brown fox jumps"}])
    run = tmp_path / "slide"
    rc = main(args(tiny_model_dir, data, run, "--epochs", "30", "--method", "memft_sw", "--sw-window", "4"))
    assert rc == 0
    rows = log_rows(run)
    anchors = [r["anchor"] for r in rows]
    assert anchors[0] != "" and int(anchors[0]) >= 0
    assert {float(r["window"]) for r in rows if r["window"] != ""} <= {4.0 * (1 + 0.5 * k) for k in range(7)}
    m = metrics(run)
    assert m["final_loss"] < m["initial_loss"]


def memorize_args(model_dir, data, out, *extra):
    return ["memorize", "--model", str(model_dir), "--data", str(data), "--out", str(out),
            "--layer", "1", "--rank", "4", "--lr", "0.1", "--dropout", "0", "--batch-size", "2", *extra]


def test_memorize_exits_0_when_every_record_is_certified(tiny_model_dir, data, tmp_path, capsys):
    run = tmp_path / "mem"
    assert main(memorize_args(tiny_model_dir, data, run)) == 0
    out = capsys.readouterr().out
    assert "certified 4/4" in out and "all 4 records certified" in out
    checks = [line for line in out.splitlines() if line.startswith("epoch ")]  # a live line per check
    assert checks and "certified 4/4" in checks[-1] and all("certified 4/4" not in c for c in checks[:-1])
    assert "Ann Lee:" in out and "4821" in out  # the per-record table
    m = metrics(run)
    assert m["stopped"] == "certified" and m["exact_match"] == 1.0
    cfg = (run / "config.yaml").read_text()
    assert "method: sft" in cfg and "stop-when: certified" in cfg and "max-steps: 2000" in cfg


def test_memorize_defaults_to_no_dropout(tiny_model_dir, data, tmp_path):
    """`train` keeps the reference dropout 0.1; `memorize` trains without dropout unless told."""
    run = tmp_path / "mem"
    main(["memorize", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(run),
          "--layer", "1", "--rank", "4", "--lr", "0.1", "--max-steps", "4"])
    assert "dropout: 0.0" in (run / "config.yaml").read_text()
    main(["memorize", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "d"),
          "--layer", "1", "--rank", "4", "--max-steps", "2", "--dropout", "0.2"])
    assert "dropout: 0.2" in (tmp_path / "d" / "config.yaml").read_text()


def test_memorize_exits_1_when_the_budget_runs_out(tiny_model_dir, data, tmp_path, capsys):
    run = tmp_path / "short"
    assert main(memorize_args(tiny_model_dir, data, run, "--max-steps", "2")) == 1
    assert "step budget ran out" in capsys.readouterr().out
    m = metrics(run)
    assert m["steps"] == 2 and m["stopped"] == "budget" and m["certified_fraction"] < 1.0
    assert (run / "adapter.safetensors").is_file()


# ---------------------------------------------------------------------- the method registry
def last_token_method():
    """A method defined only here: each record's last answer token, nothing else (no fields of its own)."""
    import torch

    from memlaw.train.method import Method

    class Last(Method):
        name = "last_token"

        def weights(self, tokens, record_ids):
            mask = tokens.batch.target_mask  # (B, L)
            last = mask.float().cumsum(1) == mask.sum(1, keepdim=True)  # the last target position of each row
            return (last & mask).to(torch.float32), {}

    return Last


def test_a_method_registered_in_one_module_trains_and_sweeps(tiny_model_dir, data, tmp_path, monkeypatch):
    """Adding a method is a class in memlaw.train.method's METHODS: `memlaw train --method` and a sweep grid's
    `methods` take it with no other change."""
    from memlaw.sweep import parse_grid
    from memlaw.train import method

    monkeypatch.setitem(method.METHODS, "last_token", last_token_method())
    out = tmp_path / "last"
    assert main(args(tiny_model_dir, data, out, "--epochs", "3", "--method", "last_token")) == 0
    assert metrics(out)["steps"] == 6 and yaml_method(out) == "last_token"
    grid = parse_grid({"name": "t", "model": str(tiny_model_dir), "benchmark": "phonebook", "methods": ["last_token"],
                       "ranks": [1], "lengths": [20], "layer": 1, "train": {"epochs": 1}}, "grid.yaml")
    assert [c.method for c in grid.cells()] == ["last_token"]


def yaml_method(run) -> str:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())["method"]


@pytest.mark.parametrize("flags, said", [
    (["--method", "mem_ft"], "config field 'method': unknown method 'mem_ft'; choose from sft, memft_ot, memft_sw"),
    (["--method", "memft_sw", "--sw-window", "0"], "config field 'sw-window': must be > 0, got 0"),
    (["--method", "memft_ot", "--threshold-p", "1.5"], "config field 'threshold-p': must be in (0, 1), got 1.5"),
])
def test_a_method_checks_its_own_fields_before_anything_is_written(tiny_model_dir, data, tmp_path, capsys, flags, said):
    out = tmp_path / "bad"
    assert main(args(tiny_model_dir, data, out, *flags)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"memlaw: error: {said}"] and not out.exists()


def test_every_method_checks_its_fields_whichever_method_runs():
    """sft reads no window, yet a window that memft_sw refuses is refused in an sft config too (a typo or a damaged
    config.yaml); config.validate alone leaves the methods' fields to them."""
    from memlaw.config import TrainConfig
    from memlaw.errors import MemlawError
    from memlaw.train.method import checked

    for method in ("sft", "memft_ot", "memft_sw"):
        cfg = TrainConfig(data="x.jsonl", method=method, sw_mode="au")
        assert cfg.validate() is cfg
        with pytest.raises(MemlawError, match="config field 'sw-mode': must be one of auto, curriculum, sliding"):
            checked(cfg)
