"""Remembering your own facts (issue 16) on the tiny model: ask, add without forgetting, plan, locality, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import write_records
from memlaw.cli import main
from memlaw.memory import Memory

PHONES = [
    {"id": 1, "query": "Ann Lee:", "target": "4821"},
    {"id": 2, "query": "Bob Ray:", "target": "90"},
    {"id": 3, "query": "Cy Wu:", "target": "377"},
    {"id": 4, "query": "Di Fox:", "target": "15"},
]


def memorize_argv(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["memorize", "--model", str(model), "--data", str(data), "--out", str(out), "--layer", "1", "--rank", "8",
            "--lr", "0.05", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory) -> Path:
    """A tiny run that memorized the four records (every one certified)."""
    root = tmp_path_factory.mktemp("memory")
    data = write_records(root / "phones.jsonl", PHONES)
    out = root / "run"
    assert main(memorize_argv(tiny_model_dir, data, out)) == 0
    return out


def records_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "records.jsonl").read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------- ask
def test_ask_reproduces_the_records_generations(run):
    memory = Memory.load(run)
    rows = records_of(run)
    answers = memory.ask_many([r["query"] for r in rows])
    for row, answer in zip(rows, answers):
        n = len(row["target_probs"])  # the answer's own tokens (the tiny tokenizer: one per character)
        assert answer.text[:n] == row["generated"] and answer.record == row
        assert answer.matches_target == (answer.text == row["target"]) and answer.certified == row["certified"]
        if row["certified"]:  # the trained end of turn follows a certified answer: it is the whole answer
            assert answer.ended and answer.text == row["target"] == row["generated"]
        assert len(answer.probs) == len(answer.token_ids) and all(0 < p <= 1 for p in answer.probs)
    # one at a time gives the same as the batch
    assert memory.ask(rows[1]["query"]).token_ids == answers[1].token_ids
    stranger = memory.ask("Zed Q:")
    assert stranger.record is None and stranger.matches_target is None and stranger.certified is None


def test_ask_cli_query_file_and_interactive(run, tmp_path, capsys, monkeypatch):
    rows = records_of(run)
    assert main(["ask", str(run), rows[0]["query"]]) == 0
    out = capsys.readouterr().out
    assert f"answer: {rows[0]['generated']}" in out and f"record {rows[0]['id']}: target '{rows[0]['target']}'" in out

    queries = write_records(tmp_path / "q.jsonl", [{"query": r["query"], "note": i} for i, r in enumerate(rows)]
                            + [{"query": "Zed Q:"}])
    assert main(["ask", str(run), "--data", str(queries), "--out", str(tmp_path / "answers.jsonl")]) == 0
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [a["query"] for a in answers] == [r["query"] for r in rows] + ["Zed Q:"]
    assert [a.get("note") for a in answers] == [0, 1, 2, 3, None]
    assert [a["in_run"] for a in answers] == [True] * 4 + [False]
    assert all(a["answer"] == r["target"] for a, r in zip(answers, rows) if r["certified"])

    lines = iter([rows[2]["query"], "Zed Q:", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    monkeypatch.setenv("MEMLAW_CACHE", str(tmp_path / "cache"))
    assert main(["ask", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.count("answer: ") == 2 and "not one of the run's records" in out


@pytest.mark.parametrize("argv, message", [
    (["ask", "{tmp}/nowhere", "q"], "run folder {tmp}/nowhere does not exist"),
    (["ask", "{run}", "Zed Q:", "--record"], "'Zed Q:' is not a query of the run {run}"),
    (["ask", "{run}", "--data", "{tmp}/missing.jsonl"], "data file {tmp}/missing.jsonl does not exist"),
    (["ask", "{run}", "q", "--max-new-tokens", "0"], "--max-new-tokens: must be a positive integer"),
    (["ask", "{run}", "q", "--out", "{tmp}/a.jsonl"], "--out goes with --data"),
])
def test_ask_bad_input_is_one_line(run, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, run=run) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(tmp=tmp_path, run=run) in err[0]


# ---------------------------------------------------------------------- memorize --into
NEW = [{"id": 5, "query": "Eve Ng:", "target": "62"}, {"id": 6, "query": "Fay Oh:", "target": "703"}]


def copy_run(run: Path, dest: Path) -> Path:
    return Memory.load(run).save(dest)


def test_into_adds_records_and_keeps_every_old_one(run, tmp_path, capsys):
    mine = copy_run(run, tmp_path / "mine")
    new = write_records(tmp_path / "new.jsonl", NEW)
    assert main(["memorize", "--into", str(mine), "--data", str(new)]) == 0
    out = capsys.readouterr().out
    assert "new records certified: 2/2" in out and "old records lost: 0 of 4" in out and "all certified" in out
    rows = records_of(mine)
    assert [r["query"] for r in rows] == [r["query"] for r in PHONES + NEW]
    assert all(r["certified"] and r["exact"] for r in rows)
    data = [json.loads(line) for line in (mine / "data.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(d["query"], d["target"]) for d in data] == [(r["query"], r["target"]) for r in PHONES + NEW]
    config = (mine / "config.yaml").read_text(encoding="utf-8")
    assert f"data: {(mine / 'data.jsonl').resolve()}" in config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "new.jsonl"]  # no work folder left behind
    # the same records again: nothing to add
    assert main(["memorize", "--into", str(mine), "--data", str(new)]) == 0
    assert "nothing to add" in capsys.readouterr().out


def test_into_keeps_a_gated_memory_gated(tiny_model_dir, tmp_path, capsys):
    """memorize --into trains with the run's own locality means: the grown unit is gated like the old one, its key
    refit on old and new records together (every one certified through it)."""
    from safetensors.torch import load_file

    data = write_records(tmp_path / "phones.jsonl", PHONES)
    mine = tmp_path / "mine"
    assert main(memorize_argv(tiny_model_dir, data, mine, "--no-locality")) == 0  # memorize's default: gated
    assert "gate: " in capsys.readouterr().out
    before = json.loads((mine / "adapter.json").read_text())
    key = next(v for k, v in load_file(str(mine / "adapter.safetensors")).items() if k.endswith(".key"))
    new = write_records(tmp_path / "new.jsonl", NEW)
    assert main(["memorize", "--into", str(mine), "--data", str(new), "--no-locality"]) == 0
    out = capsys.readouterr().out
    assert "old records lost: 0 of 4" in out and "gate: " in out
    assert json.loads((mine / "adapter.json").read_text()) == before and before["gate"] is True
    assert "preserve-gate: 0.5" in (mine / "config.yaml").read_text(encoding="utf-8")
    assert all(r["certified"] for r in records_of(mine))
    grown = load_file(str(mine / "adapter.safetensors"))
    assert sorted(k.rsplit(".", 1)[1] for k in grown) == ["A", "B", "key", "threshold"]
    assert not torch.equal(next(v for k, v in grown.items() if k.endswith(".key")), key)  # refit with the new records
    assert main(["memorize", "--into", str(mine), "--data", str(new), "--preserve-gate", "0"]) == 2  # the unit's form is fixed
    assert "preserve_gate cannot change" in capsys.readouterr().err


def test_into_rejects_a_conflicting_target_unless_replace(run, tmp_path, capsys):
    mine = copy_run(run, tmp_path / "mine")
    stamp = (mine / "adapter.safetensors").stat().st_mtime_ns
    conflict = write_records(tmp_path / "conflict.jsonl", [{"query": "Bob Ray:", "target": "91"}])
    assert main(["memorize", "--into", str(mine), "--data", str(conflict)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "query 'Bob Ray:' is already memorized with target '90', not '91' (--replace" in err[0]
    assert (mine / "adapter.safetensors").stat().st_mtime_ns == stamp
    assert main(["memorize", "--into", str(mine), "--data", str(conflict), "--replace"]) == 0
    rows = {r["query"]: r for r in records_of(mine)}
    assert rows["Bob Ray:"]["target"] == "91" and rows["Bob Ray:"]["certified"] and len(rows) == 4


def test_into_with_too_small_a_budget_leaves_the_memory_unchanged(run, tmp_path, capsys):
    mine = copy_run(run, tmp_path / "mine")
    before = (mine / "records.jsonl").read_bytes()
    new = write_records(tmp_path / "new.jsonl", NEW)
    assert main(["memorize", "--into", str(mine), "--data", str(new), "--max-steps", "1"]) == 1
    out = capsys.readouterr().out
    assert f"{mine} is unchanged; the attempt is in {mine}.incomplete" in out
    assert (mine / "records.jsonl").read_bytes() == before
    assert len(records_of(Path(f"{mine}.incomplete"))) == 6


@pytest.mark.parametrize("extra, message", [
    (["--rank", "2"], "adding records keeps the run's unit and prompt: rank cannot change"),
    ([], "--into RUN needs --data FILE"),
    (["--data", "{tmp}/new.jsonl", "--out", "{tmp}"], "--out {tmp} exists; give a new folder"),
])
def test_into_bad_input_is_one_line(run, tmp_path, capsys, extra, message):
    write_records(tmp_path / "new.jsonl", NEW)
    extra = [e.format(tmp=tmp_path, run=run) for e in extra]
    if "--data" not in extra and message != "--into RUN needs --data FILE":
        extra += ["--data", str(tmp_path / "new.jsonl")]
    assert main(["memorize", "--into", str(run), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(tmp=tmp_path, run=run) in err[0]


def test_python_api_memorize_ask_add_save(tiny_model_dir, tmp_path):
    import memlaw

    mem = memlaw.memorize(PHONES[:2], rank=8, model=str(tiny_model_dir), layer=[1], lr=0.05, device="cpu",
                          out=tmp_path / "mem")
    assert [mem.ask(r["query"]).text for r in PHONES[:2]] == [r["target"] for r in PHONES[:2]]
    report = mem.add(PHONES[2:])
    assert report.all_certified and report.new == 2 and report.old_lost == [] and report.saved_to == tmp_path / "mem"
    assert [a.text for a in mem.ask_many([r["query"] for r in PHONES])] == [r["target"] for r in PHONES]
    saved = mem.save(tmp_path / "kept")
    again = Memory.load(saved)
    assert again.ask("Di Fox:").text == "15" and len(again.records) == 4


# ---------------------------------------------------------------------- locality
@pytest.mark.parametrize("component", ["mlp", "lora"])
def test_locality_is_exactly_none_for_a_zero_unit(tiny_model_dir, tmp_path, component):
    from memlaw.config import TrainConfig
    from memlaw.evaluate.locality import measure_locality
    from memlaw.session import new_session

    data = write_records(tmp_path / "phones.jsonl", PHONES)
    session = new_session(TrainConfig(data=str(data), model=str(tiny_model_dir), layer=[1], rank=4, device="cpu",
                                      component=component).validate())
    loc = measure_locality(session)  # B = 0: the unit adds exactly nothing
    assert loc.kl_text == 0.0 and loc.kl_prompts == 0.0 and loc.unchanged == 1.0
    assert loc.ppl_adapted == loc.ppl_base and loc.ppl_change == 0.0
    assert loc.text_tokens > 500 and loc.prompts == 32


def test_locality_of_a_trained_unit_is_measured_and_reported(run, tmp_path, capsys):
    loc = Memory.load(run).locality()
    assert loc.kl_text > 0 and loc.kl_prompts > 0 and 0.0 <= loc.unchanged <= 1.0 and loc.ppl_adapted != loc.ppl_base
    stored = json.loads((run / "locality.json").read_text(encoding="utf-8"))  # memorize measured it at the end
    assert stored["kl_text"] == pytest.approx(loc.kl_text, rel=1e-4) and stored["unchanged"] == loc.unchanged
    assert main(["eval", str(run), "--out", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    assert "KL(base || adapted) on general text" in out and "unrelated prompts answered the same" in out
    assert json.loads((tmp_path / "again" / "locality.json").read_text())["kl_text"] == pytest.approx(loc.kl_text, rel=1e-4)
    assert main(["eval", str(run), "--out", str(tmp_path / "quick"), "--no-locality"]) == 0
    assert not (tmp_path / "quick" / "locality.json").exists()


# ---------------------------------------------------------------------- export
def hf_greedy(model, tokenizer, prompt: list[int], n: int) -> list[int]:
    import torch

    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                             pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("component", ["lora", "mlp-ungated", "mlp"])
def test_export_answers_like_memlaw_without_memlaw(tiny_model_dir, tmp_path, capsys, component):
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from memlaw.data.encoding import prompt_ids

    data = write_records(tmp_path / "phones.jsonl", PHONES)
    extra = {"lora": ["--component", "lora", "--target-modules", "q_proj,down_proj", "--preserve-gate", "0"],
             "mlp-ungated": ["--preserve-gate", "0"], "mlp": []}[component]  # memorize gates its mlp unit by default
    assert main(memorize_argv(tiny_model_dir, data, tmp_path / "run", *extra)) == 0
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "export")]) == 0
    assert f"exported {tmp_path / 'run'} ({component.split('-')[0]}, rank 8)" in capsys.readouterr().out
    export = tmp_path / "export"
    if component == "lora":
        model, tokenizer = AutoModelForCausalLM.from_pretrained(export), AutoTokenizer.from_pretrained(export)
        assert (export / "peft" / "adapter_model.safetensors").is_file()
    else:
        spec = importlib.util.spec_from_file_location("memlaw_memory", export / "memlaw_memory.py")
        loader = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loader)
        model, tokenizer = loader.load(export)
        assert type(model.get_decoder().layers[1].mlp).__name__ == "ParallelMemory"
        assert (export / "model" / "model.safetensors").is_file() and (export / "memory.safetensors").is_file()
        gated = json.loads((export / "memory.json").read_text())["gate"]
        assert gated == (component == "mlp") and (model.get_decoder().layers[1].mlp.threshold is not None) == gated
    memory = Memory.load(tmp_path / "run")
    prompt = json.loads((export / "prompt.json").read_text())
    assert prompt["chat_template"] is True and prompt["system"] == "You are a helpful assistant."
    for r in PHONES:
        answer = memory.ask(r["query"])
        n = len(answer.token_ids)
        # the prompt as the export's README builds it, with transformers alone
        messages = [{"role": "system", "content": prompt["system"]}, {"role": "user", "content": r["query"]}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False, tokenize=False)
        if tokenizer.bos_token and text.startswith(tokenizer.bos_token):
            text = text[len(tokenizer.bos_token):]
        ids = tokenizer(text)["input_ids"]
        assert ids == prompt_ids(tokenizer, r["query"])
        assert hf_greedy(model, tokenizer, ids, n) == answer.token_ids
        assert answer.text == r["target"]
    assert main(["export", str(tmp_path / "run"), "--out", str(export)]) == 2  # never overwrites
    assert "exists; export into a new folder" in capsys.readouterr().err


# ---------------------------------------------------------------------- plan --data, memorize --rank auto
@pytest.fixture(scope="module")
def law_file(tmp_path_factory) -> Path:
    """A law fitted on synthetic cells (C = 20, α = 0.5, β = 0.6, b = 0.05; ranks 1-64, lengths 50-10000)."""
    import pandas as pd

    from memlaw.law.groups import fit_groups
    from memlaw.law.lawfile import write_law
    from test_law import law_points

    rank, length, y = law_points(seed=4, seeds=1, C=20.0)
    table = pd.DataFrame({"model": "tiny", "benchmark": "phonebook", "ratio": None, "method": "sft", "rank": rank,
                          "length": length, "delta_loss": y, "status": "ok"})
    return write_law(tmp_path_factory.mktemp("law") / "law.json", fit_groups(table, n_bootstrap=20))


def planned_rank(law_file: Path, answer_tokens: int, initial_loss: float) -> int:
    from memlaw.law.lawfile import default_group, group_law, read_law

    law = read_law(law_file)
    return group_law(default_group(law, law_file)[1]).rank_for(answer_tokens, 0.95 * initial_loss).power_of_two


def test_plan_data_counts_answer_tokens_exactly_and_uses_the_law(tiny_model_dir, law_file, tmp_path, capsys):
    import re

    data = write_records(tmp_path / "phones.jsonl", PHONES)
    assert main(["plan", "--data", str(data), "--model", str(tiny_model_dir), "--law", str(law_file)]) == 0
    out = capsys.readouterr().out
    tokens = sum(len(r["target"]) for r in PHONES)  # the byte-level tiny tokenizer: one token per character
    suffix = 2  # the tiny template's end of turn: <|im_end|> and "\n"
    assert f"4 records, {tokens} answer tokens ({tokens + 4 * suffix} trained" in out
    initial = float(re.search(r"initial  loss ([0-9.]+)", out).group(1))
    rank = int(re.search(r"^rank     (\d+)$", out, re.M).group(1))
    assert rank == planned_rank(law_file, tokens, initial) and rank >= 2
    assert "length 11 is outside the fitted 50–10000: an extrapolation" in out


def test_plan_data_without_a_law_probes(tiny_model_dir, tmp_path, capsys):
    data = write_records(tmp_path / "phones.jsonl", PHONES)
    assert main(["plan", "--data", str(data), "--model", str(tiny_model_dir), "--probe-steps", "200"]) == 0
    out = capsys.readouterr().out
    assert "probe    rank 1:" in out and "why      a probe certified every record at rank" in out
    assert int(out.rsplit("rank     ", 1)[1].split()[0]) in (1, 2, 4, 8, 16)


def test_memorize_rank_auto_says_what_it_chose(tiny_model_dir, law_file, tmp_path, capsys):
    data = write_records(tmp_path / "phones.jsonl", PHONES)
    out_dir = tmp_path / "auto"
    argv = memorize_argv(tiny_model_dir, data, out_dir)
    argv[argv.index("--rank") + 1] = "auto"
    assert main([*argv, "--law", str(law_file)]) in (0, 1)
    out = capsys.readouterr().out
    rank = int(out.split("rank auto: rank ")[1].split()[0])
    assert "why      the law law.json" in out
    assert f"rank: {rank}" in (out_dir / "config.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize("argv, message", [
    (["plan", "--data", "{data}", "--model", "{model}", "--law", "{tmp}/nope.json"], "law file not found: {tmp}/nope.json"),
    (["plan", "--data", "{data}", "--length", "10"], "--data measures the length and the target"),
    (["plan", "--law", "{tmp}/x.json"], "plan: give --data FILE, or --length, --delta-loss"),
    (["memorize", "--data", "{data}", "--out", "{tmp}/o", "--law", "{tmp}/x.json"], "--law goes with --rank auto"),
])
def test_plan_bad_input_is_one_line(tiny_model_dir, tmp_path, capsys, argv, message):
    data = write_records(tmp_path / "phones.jsonl", PHONES)
    fill = {"data": data, "model": tiny_model_dir, "tmp": tmp_path}
    assert main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(**fill) in err[0]


def capacity_file(tmp_path: Path, bits: dict[int, float]) -> Path:
    """A capacity file as `memlaw capacity --fit` writes it, from planted bits per rank."""
    from memlaw.io import write_json
    from memlaw.law.capacity import CapacityLaw

    ranks = {str(r): {"records": round(b / 31.9), "answer_tokens": 10 * round(b / 31.9), "bits_memorized": b,
                      "trainable_params": 1152 * r, "bits_per_param": b / (1152 * r)} for r, b in bits.items()}
    path = tmp_path / "capacity.json"
    write_json(path, {"model": "default", "benchmark": "phonebook", "protocol": {"text": "sft, within 300 steps"},
                      "ranks": ranks, "law": CapacityLaw.fit(list(bits), list(bits.values())).to_dict()})
    return path


def test_capacity_law_fits_a_power_law_and_scores_the_largest_rank_held_out():
    from memlaw.law.capacity import CapacityLaw

    ranks = [1, 2, 4, 8]
    law = CapacityLaw.fit(ranks, [300 * r ** 0.75 for r in ranks])
    assert (law.k, law.a) == (pytest.approx(300), pytest.approx(0.75))
    assert law.rank_for(law.bits_at(3.0)) == pytest.approx(3.0)
    assert law.heldout["rank"] == 8 and law.heldout["error"] == pytest.approx(0, abs=1e-9)
    bent = CapacityLaw.fit(ranks, [300, 500, 800, 1000])  # rank 8 below the trend of ranks 1-4: predicted too high
    assert bent.heldout["predicted_bits"] > 1000 and bent.heldout["error"] > 0
    from memlaw.errors import MemlawError

    with pytest.raises(MemlawError, match="two ranks or more"):
        CapacityLaw.fit([4, 4], [100, 120])
    with pytest.raises(MemlawError, match="positive ranks and bits"):
        CapacityLaw.fit([1, 2], [0, 120])


def test_the_capacity_law_plans_for_the_default_model_and_falls_back_to_the_probe(tmp_path, monkeypatch):
    """For the default model the shipped capacity law answers from the file's bits; beyond 2x its largest measured
    rank the probe answers (and says why); a --law (a ΔL law) that cannot answer is an error."""
    from memlaw.errors import MemlawError
    from memlaw.law import advice

    shipped = capacity_file(tmp_path, {1: 400.0, 2: 650.0, 4: 1050.0, 8: 1700.0})
    monkeypatch.setattr(advice, "default_file", lambda name: shipped if name == advice.DEFAULT_MODEL_CAPACITY else None)
    monkeypatch.setattr(advice, "probe_advice", lambda path, model, **kw: advice.Advice(64, "probe", "probed"))

    def summary(bits: float, model: str = "default"):
        return advice.DataSummary("keys.jsonl", model, 12, 200, 224, 7.17, bits, "base-model loss (upper bound)")

    for bits, rank in ((100.0, 1), (420.0, 2), (900.0, 4), (1100.0, 8), (2500.0, 16)):
        chosen = advice.advise(summary(bits))
        assert (chosen.source, chosen.rank) == ("capacity", rank), bits
    assert "holds 900 bits from rank" in advice.advise(summary(900.0)).reason
    heard = []
    far = advice.advise(summary(9000.0), note=heard.append)  # rank ~ 60: beyond 2 x 8
    assert (far.source, far.rank) == ("probe", 64) and "beyond 2x its largest measured rank 8" in heard[0]
    assert advice.advise(summary(900.0, model=str(tmp_path))).source == "probe"  # no shipped law for another model
    with pytest.raises(MemlawError, match="law file not found"):
        advice.advise(summary(900.0), law=tmp_path / "none.json")


def test_capacity_fit_joins_searches_of_one_protocol(tmp_path, capsys):
    import json

    from memlaw.io import write_json

    runs = []
    for rank, records in ((1, 10), (2, 17), (4, 28)):
        folder = tmp_path / f"r{rank}"
        write_json(folder / "capacity.json", {
            "benchmark": "phonebook", "model": "default", "rank": rank, "method": "sft", "max_steps": 300,
            "protocol": {"method": "sft", "max_steps": 300, "text": "sft, within 300 steps"}, "records": records,
            "answer_tokens": 10 * records, "bits_memorized": 31.9 * records, "trainable_params": 1152 * rank,
            "bits_per_param": 31.9 * records / (1152 * rank)})
        runs.append(str(folder))
    out = tmp_path / "joined.json"
    assert main(["capacity", "--fit", *runs, "--out", str(out)]) == 0
    joined = json.loads(out.read_text())
    assert sorted(joined["ranks"]) == ["1", "2", "4"] and joined["law"]["heldout"]["rank"] == 4
    assert "law      K(r) =" in capsys.readouterr().out
    other = tmp_path / "r8"
    write_json(other / "capacity.json", {**json.loads((tmp_path / "r4" / "capacity.json").read_text()), "rank": 8,
                                         "protocol": {"method": "memft_ot", "max_steps": 300, "text": "other"}})
    assert main(["capacity", "--fit", *runs, str(other), "--out", str(out)]) == 2
    assert "the searches used different settings" in capsys.readouterr().err
