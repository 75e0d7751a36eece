"""User errors through the `memlaw` CLI: one clear line on stderr, exit code 2, no traceback.

Every test calls ``memlaw.cli.main`` in-process on the tiny 3-layer Llama from conftest, so
each training run takes a second or two.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import write_records
from memlaw.cli import main

RUN_FILES = ("config.yaml", "adapter.safetensors", "adapter.json", "train_log.csv", "metrics.json", "records.jsonl")
GOOD_ROWS = [
    {"id": 1, "query": "Ann Lee:", "target": "4821"},
    {"id": 2, "query": "Bob Ray:", "target": "90"},
    {"id": 3, "query": "Cy Wu:", "target": "377"},
    {"id": 4, "query": "Di Fox:", "target": "15"},
]


# ---------------------------------------------------------------------- helpers
def assert_user_error(rc: int, capsys, *needles: str) -> str:
    """rc 2; stderr is exactly one line `memlaw: error: ...` containing every needle; no traceback."""
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    assert rc == 2, f"expected exit code 2, got {rc}; stderr={err!r}"
    error_lines = [line for line in err.splitlines() if line.startswith("memlaw: error: ")]
    assert len(error_lines) == 1, f"expected one 'memlaw: error:' line, stderr={err!r}"
    message = error_lines[0]
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    # Checked last, so that a content failure above is reported first.
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [message], f"stderr must hold only the error line, got {lines!r}"
    return message


def train_argv(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--data", str(data), "--out", str(out), "--epochs", "1", "--quiet", *extra]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def shown(path: Path) -> str:
    """How the CLI names a data file after resolving the config (an absolute, resolved path)."""
    return str(path.resolve())


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A finished training run (used by `memlaw eval` tests that must not modify it)."""
    root = tmp_path_factory.mktemp("finished")
    data = write_records(root / "train.jsonl", GOOD_ROWS)
    assert main(train_argv(tiny_model_dir, data, root / "run")) == 0
    return root / "run"


# ---------------------------------------------------------------------- 1-5: records files
def test_malformed_json_names_file_and_line(tiny_model_dir, tmp_path, capsys):
    data = write_lines(
        tmp_path / "bad.jsonl",
        [json.dumps(GOOD_ROWS[0]), json.dumps(GOOD_ROWS[1]), '{"query": "Cy Wu:", "target": '],
    )
    rc = main(train_argv(tiny_model_dir, data, tmp_path / "run"))
    assert_user_error(rc, capsys, f"{shown(data)}:3:", "malformed JSON")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_malformed_json_in_eval_data_names_file_and_line(finished_run, tmp_path, capsys):
    data = write_lines(tmp_path / "bad.jsonl", [json.dumps(GOOD_ROWS[0]), "", "not json at all"])
    rc = main(["eval", str(finished_run), "--data", str(data), "--out", str(tmp_path / "ev")])
    assert_user_error(rc, capsys, f"{data}:3:", "malformed JSON")


@pytest.mark.parametrize(
    "bad_row, line, field",
    [
        ({"target": "11"}, 2, "query"),
        ({"query": "Eve Kim:"}, 4, "target"),
    ],
)
def test_missing_field_named_with_line(tiny_model_dir, tmp_path, capsys, bad_row, line, field):
    rows = [dict(r) for r in GOOD_ROWS[:3]]
    rows.insert(line - 1, bad_row)
    data = write_records(tmp_path / "rows.jsonl", rows)
    rc = main(train_argv(tiny_model_dir, data, tmp_path / "run"))
    assert_user_error(rc, capsys, f"{shown(data)}:{line}:", f"missing field '{field}'")


def test_non_string_field_named_with_line(tiny_model_dir, tmp_path, capsys):
    data = write_records(tmp_path / "rows.jsonl", [GOOD_ROWS[0], {"query": "Bob Ray:", "target": 90}])
    rc = main(train_argv(tiny_model_dir, data, tmp_path / "run"))
    assert_user_error(rc, capsys, f"{shown(data)}:2:", "'target'", "must be a string")


def test_empty_target_named_with_line(tiny_model_dir, tmp_path, capsys):
    data = write_records(tmp_path / "rows.jsonl", [GOOD_ROWS[0], {"query": "Bob Ray:", "target": ""}, GOOD_ROWS[2]])
    rc = main(train_argv(tiny_model_dir, data, tmp_path / "run"))
    assert_user_error(rc, capsys, f"{shown(data)}:2:", "empty target")


def test_duplicate_query_with_different_target(tiny_model_dir, tmp_path, capsys):
    rows = [GOOD_ROWS[0], GOOD_ROWS[1], {"query": "Ann Lee:", "target": "9999"}]
    data = write_records(tmp_path / "rows.jsonl", rows)
    rc = main(train_argv(tiny_model_dir, data, tmp_path / "run"))
    message = assert_user_error(rc, capsys, f"{shown(data)}:3:", "duplicate", "'Ann Lee:'", "line 1")
    assert ":1:" not in message  # the second occurrence is the one named as the location


def test_exact_duplicate_is_not_an_error(tiny_model_dir, tmp_path, capsys):
    data = write_records(tmp_path / "rows.jsonl", [GOOD_ROWS[0], GOOD_ROWS[1], dict(GOOD_ROWS[0])])
    assert main(train_argv(tiny_model_dir, data, tmp_path / "run")) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["n_records"] == 2


@pytest.mark.parametrize("line, kind", [("[1, 2]", "list"), ('"Ann Lee: 4821"', "str"), ("42", "int"), ("null", "NoneType")])
def test_line_that_is_not_an_object(tiny_model_dir, tmp_path, capsys, line, kind):
    data = write_lines(tmp_path / "rows.jsonl", [json.dumps(GOOD_ROWS[0]), line])
    rc = main(train_argv(tiny_model_dir, data, tmp_path / "run"))
    assert_user_error(rc, capsys, f"{shown(data)}:2:", "expected a JSON object", kind)


def test_object_without_known_fields(tiny_model_dir, tmp_path, capsys):
    data = write_records(tmp_path / "rows.jsonl", [GOOD_ROWS[0], {"name": "Bob", "number": "90"}])
    rc = main(train_argv(tiny_model_dir, data, tmp_path / "run"))
    assert_user_error(rc, capsys, f"{shown(data)}:2:", "'query'", "'target'")


def test_file_without_records(tiny_model_dir, tmp_path, capsys):
    data = write_lines(tmp_path / "blank.jsonl", ["", "   "])
    rc = main(train_argv(tiny_model_dir, data, tmp_path / "run"))
    assert_user_error(rc, capsys, shown(data), "no records")


def test_line_number_counts_only_newlines(tiny_model_dir, tmp_path, capsys):
    """U+2028 is legal unescaped inside a JSON string (json.dumps(ensure_ascii=False) writes it
    raw, as memlaw's own write_jsonl does); it must neither break the line nor shift line numbers."""
    lines = [json.dumps({"query": "Ann\u2028Lee:", "target": "4821"}, ensure_ascii=False), json.dumps(GOOD_ROWS[1]), "{oops"]
    data = write_lines(tmp_path / "rows.jsonl", lines)
    rc = main(train_argv(tiny_model_dir, data, tmp_path / "run"))
    assert_user_error(rc, capsys, f"{shown(data)}:3:", "malformed JSON")


# ---------------------------------------------------------------------- 6-9: config values
@pytest.mark.parametrize("value, bad", [("7", "7"), ("0,7", "7"), ("-1", "-1")])
def test_layer_out_of_range(tiny_model_dir, small_records, tmp_path, capsys, value, bad):
    rc = main(train_argv(tiny_model_dir, small_records, tmp_path / "run", f"--layer={value}"))
    assert_user_error(rc, capsys, "'layer'", f"layer {bad} ", "0..2")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["0", "-3"])
def test_rank_must_be_positive(tiny_model_dir, small_records, tmp_path, capsys, value):
    rc = main(train_argv(tiny_model_dir, small_records, tmp_path / "run", f"--rank={value}"))
    assert_user_error(rc, capsys, "'rank'", "positive integer", value)


@pytest.mark.parametrize("value", ["-1", "-10"])
def test_log_token_probs_must_not_be_negative(tiny_model_dir, small_records, tmp_path, capsys, value):
    rc = main(train_argv(tiny_model_dir, small_records, tmp_path / "run", f"--log-token-probs={value}"))
    assert_user_error(rc, capsys, "'log-token-probs'", ">= 0", value)
    assert not (tmp_path / "run").exists()


def test_log_token_probs_must_be_an_integer(tiny_model_dir, small_records, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("log-token-probs: 2.5\n")
    rc = main(train_argv(tiny_model_dir, small_records, tmp_path / "run", "--config", str(cfg)))
    assert_user_error(rc, capsys, "'log-token-probs'", "expected int", "2.5")


def test_unknown_method_lists_choices(tiny_model_dir, small_records, tmp_path, capsys):
    rc = main(train_argv(tiny_model_dir, small_records, tmp_path / "run", "--method", "nonsense"))
    assert_user_error(rc, capsys, "'method'", "'nonsense'", "choose from sft")


def test_unknown_component_lists_choices(tiny_model_dir, small_records, tmp_path, capsys):
    rc = main(train_argv(tiny_model_dir, small_records, tmp_path / "run", "--component", "nonsense"))
    assert_user_error(rc, capsys, "'component'", "'nonsense'", "mlp", "lora")


def test_unknown_lora_target_module(tiny_model_dir, small_records, tmp_path, capsys):
    argv = train_argv(tiny_model_dir, small_records, tmp_path / "run", "--component", "lora", "--target-modules", "q_proj,foo_proj")
    message = assert_user_error(main(argv), capsys, "target-modules", "foo_proj")
    assert "'q_proj'" not in message.split("choose from")[0]  # only the bad name is blamed


# ---------------------------------------------------------------------- 10-11: paths
def test_model_path_does_not_exist(small_records, tmp_path, capsys):
    rc = main(train_argv(Path("/nonexistent/path"), small_records, tmp_path / "run"))
    assert_user_error(rc, capsys, "/nonexistent/path", "does not exist")


def test_model_dir_without_config_json(small_records, tmp_path, capsys):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\0")
    rc = main(train_argv(folder, small_records, tmp_path / "run"))
    assert_user_error(rc, capsys, str(folder), "config.json")


def test_data_path_does_not_exist(tiny_model_dir, tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    rc = main(train_argv(tiny_model_dir, missing, tmp_path / "run"))
    assert_user_error(rc, capsys, str(missing), "does not exist")


def test_eval_data_path_does_not_exist(finished_run, tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    rc = main(["eval", str(finished_run), "--data", str(missing), "--out", str(tmp_path / "ev")])
    assert_user_error(rc, capsys, str(missing), "does not exist")


def test_out_is_a_file(tiny_model_dir, small_records, tmp_path, capsys):
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    rc = main(train_argv(tiny_model_dir, small_records, out))
    assert_user_error(rc, capsys, "--out", str(out), "not a directory")
    assert out.read_text() == "keep me"


def test_out_below_a_file(tiny_model_dir, small_records, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = blocker / "run"
    rc = main(train_argv(tiny_model_dir, small_records, out))
    assert_user_error(rc, capsys, str(blocker))


# ---------------------------------------------------------------------- 12: finished runs in --out
def test_out_with_different_finished_run(tiny_model_dir, small_records, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_argv(tiny_model_dir, small_records, out, "--rank", "2")) == 0
    before = {name: (out / name).read_bytes() for name in RUN_FILES}
    capsys.readouterr()

    rc = main(train_argv(tiny_model_dir, small_records, out, "--rank", "3"))
    assert_user_error(rc, capsys, "--out", str(out), "--overwrite", "different finished run")
    assert {name: (out / name).read_bytes() for name in RUN_FILES} == before  # metrics.json included

    assert main(train_argv(tiny_model_dir, small_records, out, "--rank", "3", "--overwrite")) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["rank"] == 3
    assert json.loads((out / "adapter.json").read_text())["rank"] == 3

    # The same config again into the same folder is allowed without --overwrite.
    assert main(train_argv(tiny_model_dir, small_records, out, "--rank", "3")) == 0
    assert (out / "metrics.json").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["rank"] == 3


# ---------------------------------------------------------------------- 13: YAML configs
def test_yaml_unknown_key(tiny_model_dir, small_records, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("rank: 2\nrnak: 4\n")
    rc = main(train_argv(tiny_model_dir, small_records, tmp_path / "run", "--config", str(cfg)))
    assert_user_error(rc, capsys, str(cfg), "unknown key", "'rnak'")


def test_yaml_missing_file(tiny_model_dir, small_records, tmp_path, capsys):
    cfg = tmp_path / "nope.yaml"
    rc = main(train_argv(tiny_model_dir, small_records, tmp_path / "run", "--config", str(cfg)))
    assert_user_error(rc, capsys, str(cfg))


def test_yaml_not_a_mapping(tiny_model_dir, small_records, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("- rank\n- 2\n")
    rc = main(train_argv(tiny_model_dir, small_records, tmp_path / "run", "--config", str(cfg)))
    assert_user_error(rc, capsys, str(cfg), "mapping")


def test_yaml_syntax_error_is_one_line(tiny_model_dir, small_records, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("rank: 2\nepochs: [1\n")
    rc = main(train_argv(tiny_model_dir, small_records, tmp_path / "run", "--config", str(cfg)))
    assert_user_error(rc, capsys, str(cfg), "invalid YAML")


def test_yaml_not_utf8(tiny_model_dir, small_records, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(b"rank: 2\n# caf\xe9\n")
    rc = main(train_argv(tiny_model_dir, small_records, tmp_path / "run", "--config", str(cfg)))
    assert_user_error(rc, capsys, str(cfg))


@pytest.mark.parametrize("text, field", [('dropout: "0.2"\n', "dropout"), ("dropout:\n", "dropout"), ("method: [sft]\n", "method")])
def test_yaml_value_of_wrong_type(tiny_model_dir, small_records, tmp_path, capsys, text, field):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    rc = main(train_argv(tiny_model_dir, small_records, tmp_path / "run", "--config", str(cfg)))
    assert_user_error(rc, capsys, f"'{field}'")


def test_flags_override_yaml(tiny_model_dir, small_records, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("rank: 2\nepochs: 2\nbatch-size: 3\nseed: 7\n")
    out = tmp_path / "run"
    argv = ["train", "--config", str(cfg), "--model", str(tiny_model_dir), "--data", str(small_records)]
    assert main(argv + ["--out", str(out), "--rank", "3", "--seed", "11", "--quiet"]) == 0
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["rank"] == 3 and resolved["seed"] == 11  # flags win
    assert resolved["epochs"] == 2 and resolved["batch-size"] == 3  # YAML values kept
    assert json.loads((out / "adapter.json").read_text())["rank"] == 3
    with open(out / "train_log.csv", newline="") as f:
        assert {row["epoch"] for row in csv.DictReader(f)} == {"0", "1"}  # 2 epochs ran, as YAML said


# ---------------------------------------------------------------------- 14: eval on a non-run
def test_eval_folder_that_is_not_a_run(tmp_path, capsys):
    folder = tmp_path / "stuff"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    assert_user_error(main(["eval", str(folder)]), capsys, str(folder), "not a memlaw run")


def test_eval_folder_that_does_not_exist(tmp_path, capsys):
    folder = tmp_path / "missing-run"
    assert_user_error(main(["eval", str(folder)]), capsys, str(folder), "not a memlaw run")


def test_eval_run_without_adapter(finished_run, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.yaml", "adapter.json", "train_state.json"):
        (broken / name).write_bytes((finished_run / name).read_bytes())
    rc = main(["eval", str(broken)])
    assert_user_error(rc, capsys, "adapter.safetensors")


# ---------------------------------------------------------------------- 15: Long-Context format
LONG_CONTEXT = {"id": 0, "question": "Recite the passage:", "matching": "The quick brown fox jumps over the lazy dog."}


def test_long_context_needs_length(tiny_model_dir, tmp_path, capsys):
    data = write_records(tmp_path / "lc.jsonl", [LONG_CONTEXT])
    rc = main(train_argv(tiny_model_dir, data, tmp_path / "run"))
    assert_user_error(rc, capsys, f"{shown(data)}:1:", "--length")


def test_long_context_too_short_for_length(tiny_model_dir, tmp_path, capsys):
    data = write_records(tmp_path / "lc.jsonl", [LONG_CONTEXT])
    rc = main(train_argv(tiny_model_dir, data, tmp_path / "run", "--length", "1000"))
    assert_user_error(rc, capsys, f"{shown(data)}:1:", "--length 1000")


def test_long_context_with_length_trains(tiny_model_dir, tmp_path, capsys):
    data = write_records(tmp_path / "lc.jsonl", [LONG_CONTEXT])
    assert main(train_argv(tiny_model_dir, data, tmp_path / "run", "--length", "9")) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n_records"] == 1 and metrics["target_tokens"] == 9  # byte-level tokenizer: 9 tokens


def test_long_context_matching_ids_not_a_list_of_ids(tiny_model_dir, tmp_path, capsys):
    data = write_records(tmp_path / "lc.jsonl", [dict(LONG_CONTEXT, matching_ids=[84, "104", 101])])
    rc = main(train_argv(tiny_model_dir, data, tmp_path / "run", "--length", "9"))
    assert_user_error(rc, capsys, f"{shown(data)}:1:", "'matching_ids'", "list of token ids")


# ---------------------------------------------------------------------- 15b: `memlaw data long-context --source`
@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("missing.txt", None, "cannot read it (No such file or directory)"),
        ("folder", "dir", "cannot read it (Is a directory)"),
        ("latin1.txt", b"caf\xe9 au lait", "not UTF-8 text"),
        ("binary.txt", b"\x00\x01\x02 text", "not text"),
        ("blank.txt", b"  \n\n", "empty"),
        ("paper.jsonl", b'{"question": "q", "text": "no matching"}\n', ":1: no string field 'matching'"),
        ("broken.jsonl", b'\n{"matching": \n', ":2: malformed JSON"),
    ],
)
def test_bad_long_context_source(tiny_model_dir, tmp_path, capsys, name, content, needle):
    source = tmp_path / name
    if content == "dir":
        source.mkdir()
    elif content is not None:
        source.write_bytes(content)
    out = tmp_path / "lc.jsonl"
    rc = main(["data", "long-context", "--ratio", "r20", "--length", "10", "--source", str(source),
               "--model", str(tiny_model_dir), "--out", str(out)])
    assert_user_error(rc, capsys, f"long-context source {source}", needle)
    assert not out.exists()


def test_long_context_source_shorter_than_length(tiny_model_dir, tmp_path, capsys):
    source = tmp_path / "short.txt"
    source.write_text("Too short.", encoding="utf-8")
    rc = main(["data", "long-context", "--ratio", "r20", "--length", "50", "--source", str(source),
               "--model", str(tiny_model_dir), "--out", str(tmp_path / "lc.jsonl")])
    assert_user_error(rc, capsys, str(source), "only 10 tokens", "--length 50")


# ---------------------------------------------------------------------- 16: atomic writes
@pytest.mark.parametrize("component", ["mlp", "lora"])
def test_successful_run_leaves_no_temp_files(tiny_model_dir, small_records, tmp_path, capsys, component):
    out = tmp_path / "run"
    assert main(train_argv(tiny_model_dir, small_records, out, "--component", component)) == 0
    names = {p.name for p in out.iterdir()}
    assert set(RUN_FILES) <= names
    assert "train_state.json" in names
    leftovers = [str(p) for p in out.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.suffixes]
    assert leftovers == []
    assert load_file(str(out / "adapter.safetensors"))  # readable, non-empty
    if component == "lora":
        assert (out / "peft" / "adapter_model.safetensors").is_file()


# ---------------------------------------------------------------------- 17: Ctrl-C
@pytest.mark.parametrize(
    "batch_size, interrupt_on_call, steps_per_epoch",
    [
        (4, 3, 1),  # one batch per epoch: the interrupt comes as epoch 3 starts
        (2, 6, 2),  # two batches per epoch: epoch 3 has already taken one optimizer step
    ],
    ids=["at-epoch-start", "mid-epoch"],
)
def test_ctrl_c_keeps_last_completed_epoch(
    tiny_model_dir, small_records, tmp_path, capsys, monkeypatch, batch_size, interrupt_on_call, steps_per_epoch
):
    import memlaw.train.trainer as trainer
    from memlaw.model.memory_unit import Adapter

    calls = {"n": 0}
    real_step = trainer.optimizer_step

    def interrupting_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == interrupt_on_call:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    snapshots: list[dict[str, torch.Tensor]] = []  # train_loop takes one at the start and one per finished epoch
    real_state_dict = Adapter.state_dict

    def spying_state_dict(self):
        tensors = real_state_dict(self)
        snapshots.append({k: v.clone() for k, v in tensors.items()})
        return tensors

    live_at_save: list[dict[str, torch.Tensor]] = []
    real_save = Adapter.save

    def spying_save(self, folder, tensors=None):
        live_at_save.append(real_state_dict(self))
        return real_save(self, folder, tensors)

    monkeypatch.setattr(trainer, "optimizer_step", interrupting_step)
    monkeypatch.setattr(Adapter, "state_dict", spying_state_dict)
    monkeypatch.setattr(Adapter, "save", spying_save)

    out = tmp_path / "run"
    argv = train_argv(tiny_model_dir, small_records, out, "--batch-size", str(batch_size), "--dropout", "0")
    argv[argv.index("--epochs") + 1] = "5"
    rc = main(argv)

    _, err = capsys.readouterr()
    assert rc == 130
    assert "Traceback" not in err
    message = [line for line in err.splitlines() if line.startswith("memlaw: ")]
    assert len(message) == 1, err
    assert "interrupted during epoch 2" in message[0] and "kept the adapter" in message[0]
    assert "2 epoch(s)" in message[0] and str(out) in message[0]

    assert calls["n"] == interrupt_on_call
    assert not (out / "metrics.json").exists()
    assert (out / "config.yaml").is_file()
    state = json.loads((out / "train_state.json").read_text())
    assert state["interrupted"] is True and state["epochs_completed"] == 2

    with open(out / "train_log.csv", newline="") as f:
        log = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in log] == [e for e in range(2) for _ in range(steps_per_epoch)]

    # The saved adapter is the state after exactly 2 epochs (the third snapshot), not the initial
    # one and not the live state at the interrupt.
    assert len(snapshots) == 3
    saved = load_file(str(out / "adapter.safetensors"))
    after_two = snapshots[2]
    assert saved.keys() == after_two.keys()
    for name, tensor in saved.items():
        assert torch.equal(tensor, after_two[name].cpu()), name
    assert any(not torch.equal(saved[k], snapshots[1][k].cpu()) for k in saved)  # epoch 2 changed something
    assert len(live_at_save) == 1
    live = live_at_save[0]
    if steps_per_epoch > 1:  # an optimizer step of epoch 3 had happened: the live state must differ
        assert any(not torch.equal(saved[k], live[k].cpu()) for k in saved)
    else:
        assert all(torch.equal(saved[k], live[k].cpu()) for k in saved)


def test_ctrl_c_train_state_counts_the_kept_steps(tiny_model_dir, small_records, tmp_path, capsys, monkeypatch):
    """After Ctrl-C mid-epoch, train_state.json describes the kept adapter (4 steps, as in train_log.csv),
    not the optimizer step of the discarded partial epoch."""
    import memlaw.train.trainer as trainer

    calls = {"n": 0}
    real_step = trainer.optimizer_step

    def interrupting_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # 2 batches per epoch: second batch of epoch 3
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "optimizer_step", interrupting_step)
    out = tmp_path / "run"
    argv = train_argv(tiny_model_dir, small_records, out, "--batch-size", "2")
    argv[argv.index("--epochs") + 1] = "5"
    assert main(argv) == 130
    with open(out / "train_log.csv", newline="") as f:
        log = list(csv.DictReader(f))
    state = json.loads((out / "train_state.json").read_text())
    assert len(log) == 4 and state["epochs_completed"] == 2
    assert state["steps"] == len(log)
