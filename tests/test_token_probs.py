"""--log-token-probs N: the per-token probability trace of a training run (token_probs.safetensors)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import write_records
from memlaw.cli import main
from memlaw.errors import MemlawError
from memlaw.evaluate.run import initial_stats
from memlaw.rundir import RunDir
from memlaw.session import new_session
from memlaw.sweep import parse_grid

ROWS = [
    {"id": "ann", "query": "Ann Lee:", "target": "4821"},
    {"id": "bob", "query": "Bob Ray:", "target": "90"},
    {"id": "cy", "query": "Cy Wu:", "target": "377"},
]
ANSWER_LENGTHS = [4, 2, 3]  # one token per byte in the tiny tokenizer
BATCH = 2
FLOAT16 = {"rtol": 1e-3, "atol": 1e-6}  # the file's float16 (and records.jsonl's 6 decimals)


def args(model_dir, data, out, *extra):
    return ["train", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--quiet",
            "--layer", "1", "--rank", "4", "--lr", "0.1", "--batch-size", str(BATCH), *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_records(tmp_path_factory.mktemp("token-probs") / "records.jsonl", ROWS)


@pytest.fixture(scope="module")
def traced(tiny_model_dir, data, tmp_path_factory):
    """A run with --log-token-probs 2: 100 epochs of 2 steps, cut to 149 steps by --max-steps."""
    out = tmp_path_factory.mktemp("traced") / "run"
    assert main(args(tiny_model_dir, data, out, "--dropout", "0", "--epochs", "100", "--max-steps", "149",
                     "--log-token-probs", "2")) == 0
    return RunDir(out)


def expected_steps(epochs: int, every: int, max_steps: int | None = None) -> list[int]:
    """Step 0, every `every` steps, and the last step once."""
    last = epochs * math.ceil(len(ROWS) / BATCH)
    last = min(last, max_steps) if max_steps else last
    return sorted({*range(0, last + 1, every), last})


def test_off_by_default_leaves_no_file(tiny_model_dir, data, tmp_path):
    run = RunDir(tmp_path / "run")
    assert main(args(tiny_model_dir, data, run.path, "--epochs", "2")) == 0
    assert run.metrics_path.is_file() and not run.token_probs_path.exists()
    with pytest.raises(MemlawError, match="token_probs.safetensors.*--log-token-probs"):
        run.read_token_probs()


def test_trace_steps_shape_and_ids(traced):
    trace = traced.read_token_probs()
    assert trace.steps.tolist() == expected_steps(100, 2, max_steps=149) == [*range(0, 149, 2), 149]
    assert trace.steps.dtype == np.int64
    assert trace.probs.shape == (len(trace.steps), sum(ANSWER_LENGTHS)) and trace.probs.dtype == np.float32
    assert trace.offsets.tolist() == [0, 4, 6, 9]
    assert trace.ids == ["ann", "bob", "cy"] and trace.n_records == 3 and trace.threshold == 0.5
    assert [trace.record(i).shape for i in range(3)] == [(76, 4), (76, 2), (76, 3)]
    assert np.all((trace.probs >= 0) & (trace.probs <= 1))


def test_last_step_on_the_schedule_is_recorded_once(tiny_model_dir, data, tmp_path):
    run = RunDir(tmp_path / "run")
    assert main(args(tiny_model_dir, data, run.path, "--dropout", "0", "--epochs", "3", "--log-token-probs", "2")) == 0
    assert run.read_token_probs().steps.tolist() == expected_steps(3, 2) == [0, 2, 4, 6]


def test_last_row_is_the_evaluated_adapter(traced):
    trace = traced.read_token_probs()
    records = traced.read_records()
    assert [r["id"] for r in records] == trace.ids
    for i, r in enumerate(records):
        np.testing.assert_allclose(trace.record(i)[-1], r["target_probs"], **FLOAT16)
    # training moved the stubborn tokens across the threshold: none left at the end, some at step 0
    assert (trace.probs[0] <= 0.5).sum() > 0 and (trace.probs[-1] <= 0.5).sum() == 0


def test_first_row_is_the_model_before_training(traced):
    trace = traced.read_token_probs()
    session = new_session(traced.read_config())
    _, encoded = session.load_data()
    base = np.concatenate([s.probs for s in initial_stats(session, session.answer_forward(encoded))])
    np.testing.assert_allclose(trace.probs[0], base, **FLOAT16)  # the adapter starts as the identity (B = 0)
    assert not np.allclose(trace.probs[1], base, rtol=0.1, atol=0)  # and two updates later it has moved


def test_same_config_and_seed_give_the_same_trace_and_recording_does_not_change_training(tiny_model_dir, data, tmp_path):
    """With dropout on, so a recording pass that drew random numbers would change the adapter."""
    runs = [RunDir(tmp_path / name) for name in ("a", "b", "off")]
    for run, every in zip(runs, ("1", "1", "0")):
        assert main(args(tiny_model_dir, data, run.path, "--dropout", "0.2", "--epochs", "3", "--log-token-probs", every)) == 0
    a, b = runs[0].read_token_probs(), runs[1].read_token_probs()
    assert np.array_equal(a.steps, b.steps) and np.array_equal(a.probs, b.probs) and a.ids == b.ids
    assert np.array_equal(a.offsets, b.offsets)
    assert a.steps.tolist() == list(range(7))
    from safetensors.torch import load_file

    with_trace, without = (load_file(str(r.path / "adapter.safetensors")) for r in runs[::2])
    assert all(torch.equal(with_trace[k], without[k]) for k in without)


def test_memorize_records_through_the_certified_step(tiny_model_dir, data, tmp_path):
    run = RunDir(tmp_path / "run")
    argv = ["memorize", *[a for a in args(tiny_model_dir, data, run.path, "--log-token-probs", "10")[1:] if a != "--quiet"]]
    assert main(argv) == 0
    last = run.read_metrics().steps_to_certified
    assert run.read_token_probs().steps.tolist() == sorted({*range(0, last, 10), last})
    assert np.all(run.read_token_probs().probs[-1] > 0.5)  # the certificate, in the trace's last row


def test_ctrl_c_keeps_the_rows_of_the_kept_epochs(tiny_model_dir, data, tmp_path, capsys, monkeypatch):
    """Interrupted in the 2nd step of epoch 3: the kept adapter has seen 4 steps, so rows 0..4 stay (not 5)."""
    import memlaw.train.trainer as trainer

    calls = {"n": 0}
    real_step = trainer.optimizer_step

    def interrupting_step(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real_step(*a, **kw)

    monkeypatch.setattr(trainer, "optimizer_step", interrupting_step)
    run = RunDir(tmp_path / "run")
    assert main(args(tiny_model_dir, data, run.path, "--epochs", "5", "--log-token-probs", "1")) == 130
    assert run.read_token_probs().steps.tolist() == [0, 1, 2, 3, 4]


def test_a_rerun_without_the_flag_removes_the_old_trace(tiny_model_dir, data, tmp_path):
    run = RunDir(tmp_path / "run")
    assert main(args(tiny_model_dir, data, run.path, "--epochs", "1", "--log-token-probs", "1")) == 0
    assert run.token_probs_path.is_file()
    assert main(args(tiny_model_dir, data, run.path, "--epochs", "1", "--overwrite")) == 0
    assert not run.token_probs_path.exists()


def test_sweep_grid_passes_the_field_to_every_cell():
    grid = parse_grid({
        "name": "t", "model": "/m", "benchmark": "phonebook", "methods": ["sft"], "ranks": [1, 2], "lengths": [20],
        "seeds": [1], "train": {"log_token_probs": 10},
    }, "grid.yaml")
    assert {cell.train_config("d.jsonl").log_token_probs for cell in grid.cells()} == {10}


# ---------------------------------------------------------------------- the file's own contract
def write_trace(run: RunDir) -> None:
    run.write_token_probs([0, 5], np.array([[0.1, 0.2, 0.3], [0.6, 0.7, 0.9]]), [1, 2], [7, "x"], 0.5)


def test_write_then_read_round_trip(tmp_path):
    run = RunDir(tmp_path)
    write_trace(run)
    trace = run.read_token_probs()
    assert trace.steps.tolist() == [0, 5] and trace.ids == [7, "x"]
    assert trace.record(0).tolist() == [[pytest.approx(0.1, abs=1e-3)], [pytest.approx(0.6, abs=1e-3)]]
    np.testing.assert_allclose(trace.record(1), [[0.2, 0.3], [0.7, 0.9]], atol=1e-3)
    assert [p.name for p in tmp_path.iterdir()] == ["token_probs.safetensors"]  # no temp file left


def test_writing_parts_that_do_not_agree_is_refused(tmp_path):
    with pytest.raises(ValueError, match="offsets"):
        RunDir(tmp_path).write_token_probs([0], np.zeros((1, 3)), [1, 1], [1, 2], 0.5)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no-ids", "bad-offsets"])
def test_a_damaged_file_is_one_memlaw_error_naming_it(tmp_path, damage):
    from safetensors.torch import save

    run = RunDir(tmp_path)
    write_trace(run)
    blob = run.token_probs_path.read_bytes()
    good = {"probs": torch.zeros(2, 3, dtype=torch.float16), "steps": torch.tensor([0, 5])}
    run.token_probs_path.write_bytes({
        "garbage": b"not a safetensors file",
        "truncated": blob[:-4],
        "no-ids": save({**good, "offsets": torch.tensor([0, 1, 3])}, metadata={"threshold": "0.5"}),
        "bad-offsets": save({**good, "offsets": torch.tensor([0, 1, 4])}, metadata={"ids": json.dumps([1, 2]), "threshold": "0.5"}),
    }[damage])
    with pytest.raises(MemlawError, match=r"token_probs\.safetensors: not a memlaw token-probability file") as e:
        run.read_token_probs()
    assert "\n" not in str(e.value)
