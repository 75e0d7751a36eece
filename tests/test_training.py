"""Training end to end on a tiny model: memorization, metrics, logs, reproducibility, eval."""

from __future__ import annotations

import csv
import json
import os
import math

import pytest
import torch
import yaml

from conftest import HIDDEN, write_records
from memlaw.cli import main

METRIC_KEYS = {
    "exact_match", "token_accuracy", "free_run_token_accuracy", "initial_loss", "final_loss", "delta_loss",
    "stubborn_tokens", "certified_fraction", "bits_memorized", "loss_bits", "trainable_params", "bits_per_param", "n_records",
    "target_tokens", "steps", "train_seconds",
}
RECORD_KEYS = {"id", "query", "target", "generated", "exact", "first_failure", "target_probs", "stubborn_positions", "certified"}


def train_args(model_dir, data, out, *extra):
    return ["train", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--quiet",
            "--layer", "1", "--rank", "4", "--lr", "0.1", "--dropout", "0", "--batch-size", "2", *extra]


@pytest.fixture(scope="module")
def memorized(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("memorized")
    data = write_records(tmp / "records.jsonl", [
        {"id": 1, "query": "Ann Lee:", "target": "4821"},
        {"id": 2, "query": "Bob Ray:", "target": "90"},
        {"id": 3, "query": "Cy Wu:", "target": "377"},
    ])
    out = tmp / "run"
    assert main(train_args(tiny_model_dir, data, out, "--epochs", "100")) == 0
    return out, data


def assert_same_tensors(a, b):
    """safetensors headers may order metadata differently; compare the tensors themselves."""
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def read_metrics(run):
    return json.loads((run / "metrics.json").read_text())


def test_tiny_model_memorizes_and_certificate_holds(memorized):
    run, _ = memorized
    m = read_metrics(run)
    assert METRIC_KEYS <= set(m)
    assert m["exact_match"] == 1.0 and m["certified_fraction"] == 1.0
    assert m["certificate_violations"] == 0
    assert m["n_records"] == 3 and m["target_tokens"] == 9
    assert m["final_loss"] < math.log(2) < m["initial_loss"]
    assert m["delta_loss"] == pytest.approx(m["initial_loss"] - m["final_loss"])
    # bits count the answer's own 9 tokens; delta_loss also averages over the trained end-of-turn suffix
    assert m["loss_bits"] == pytest.approx(m["delta_answer_loss"] * 9 / math.log(2))
    assert m["trainable_params"] == 2 * HIDDEN * 4
    # undeclared, non-PhoneBook records: their information is the base model's loss on them (an upper bound),
    # and every record is recalled, so all of it counts as memorized
    assert m["information_source"] == "base-model loss (upper bound)"
    assert m["information_bits"] == pytest.approx(m["initial_answer_loss"] * 9 / math.log(2))
    assert m["bits_memorized"] == pytest.approx(m["information_bits"])
    assert m["bits_per_param"] == pytest.approx(m["bits_memorized"] / m["trainable_params"])
    rows = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(RECORD_KEYS <= set(r) for r in rows)
    for r in rows:
        assert r["generated"] == r["target"] and r["exact"] and r["first_failure"] is None
        assert r["certified"] == all(p > 0.5 for p in r["target_probs"])
        assert r["stubborn_positions"] == [i for i, p in enumerate(r["target_probs"]) if p <= 0.5]


def test_train_log_has_one_row_per_optimizer_step(memorized):
    run, _ = memorized
    with open(run / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "step", "loss", "lr", "mean_target_prob", "stubborn_tokens",
                             "active_tokens", "masked_tokens", "updated", "anchor", "window"]
    per_epoch = {}
    for r in rows:
        per_epoch[r["epoch"]] = per_epoch.get(r["epoch"], 0) + int(r["active_tokens"])
    # sft: every trained token of the 3 records is active each epoch: 9 answer tokens + each record's
    # end-of-turn suffix (<|im_end|> and a newline: 2 tokens in the tiny tokenizer)
    assert set(per_epoch.values()) == {9 + 3 * 2}
    assert all(r["updated"] == "1" and int(r["masked_tokens"]) == 0 for r in rows)
    steps = read_metrics(run)["steps"]
    assert steps == 100 * 2 == len(rows)  # 3 records, batch 2 -> 2 steps per epoch
    assert [int(r["step"]) for r in rows] == list(range(1, steps + 1))
    assert float(rows[0]["lr"]) == pytest.approx(0.1) and float(rows[-1]["lr"]) < 0.1 / steps * 1.01
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert int(rows[0]["stubborn_tokens"]) > int(rows[-1]["stubborn_tokens"])


def test_resolved_config_is_saved_and_replays(memorized, tmp_path):
    run, data = memorized
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    gpu = torch.cuda.is_available()  # --device auto / --dtype auto resolve to what ran, and say why
    cpu_bf16 = os.environ["MEMLAW_CPU_BF16"] == "1"  # conftest pins the CPU rule
    assert cfg["device"] == ("cuda" if gpu else "cpu") and cfg["dtype"] == ("bfloat16" if gpu or cpu_bf16 else "float32")
    assert cfg["dtype-reason"] == ("auto: CUDA device" if gpu else f"auto: MEMLAW_CPU_BF16={int(cpu_bf16)}")
    assert cfg["layer"] == [1] and cfg["rank"] == 4
    # the saved config is a valid --config file that reproduces the run exactly
    again = tmp_path / "again"
    assert main(["train", "--config", str(run / "config.yaml"), "--out", str(again), "--quiet"]) == 0
    a, b = read_metrics(run), read_metrics(again)
    a.pop("train_seconds"), b.pop("train_seconds")
    assert a == b
    assert_same_tensors(run / "adapter.safetensors", again / "adapter.safetensors")


def test_eval_reproduces_training_metrics(memorized, capsys):
    run, _ = memorized
    before = read_metrics(run)
    assert main(["eval", str(run)]) == 0
    assert "exact_match" in capsys.readouterr().out
    assert read_metrics(run) == before


def test_eval_on_other_data_writes_beside_the_run(memorized, tmp_path):
    run, _ = memorized
    other = write_records(tmp_path / "heldout.jsonl", [{"query": "Ann Lee:", "target": "4821"}, {"query": "Zed Q:", "target": "55"}])
    assert main(["eval", str(run), "--data", str(other)]) == 0
    m = read_metrics(run / "eval-heldout")
    assert m["n_records"] == 2 and 0.5 <= m["exact_match"] <= 1.0  # the trained record is still recalled


def test_different_seed_gives_different_run(tiny_model_dir, small_records, tmp_path):
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"s{seed}"
        assert main(train_args(tiny_model_dir, small_records, out, "--epochs", "2", "--seed", seed)) == 0
        outs.append(out)
    with pytest.raises(AssertionError):
        assert_same_tensors(outs[0] / "adapter.safetensors", outs[1] / "adapter.safetensors")


def test_lora_component_trains_and_saves_peft(tiny_model_dir, small_records, tmp_path):
    out = tmp_path / "lora"
    rc = main(train_args(tiny_model_dir, small_records, out, "--epochs", "40", "--component", "lora",
                         "--target-modules", "q_proj,v_proj,down_proj"))
    assert rc == 0
    m = read_metrics(out)
    assert m["final_loss"] < m["initial_loss"] - 1.0
    assert (out / "peft" / "adapter_config.json").is_file() and (out / "peft" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "adapter.json").read_text())["target_modules"] == ["q_proj", "v_proj", "down_proj"]


def test_without_chat_template(tiny_model_dir, small_records, tmp_path):
    out = tmp_path / "raw"
    assert main(train_args(tiny_model_dir, small_records, out, "--epochs", "2", "--no-chat-template")) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["chat-template"] is False
    assert read_metrics(out)["certificate_violations"] == 0


def test_grad_accum_counts_optimizer_steps(tiny_model_dir, small_records, tmp_path):
    out = tmp_path / "accum"
    # 4 records, batch 1 -> 4 micro-batches per epoch; accumulate 3 -> 2 optimizer steps per epoch
    args = train_args(tiny_model_dir, small_records, out, "--epochs", "3", "--grad-accum", "3")
    args[args.index("--batch-size") + 1] = "1"
    assert main(args) == 0
    assert read_metrics(out)["steps"] == 6
    with open(out / "train_log.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 0, 1, 1, 2, 2]
