"""Locality-preserving memorization (issue 26): the two means on the tiny model, and their pure parts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import write_records
from memlaw.cli import main
from memlaw.config import TrainConfig
from memlaw.errors import MemlawError
from memlaw.evaluate.locality import builtin_prompts, builtin_text
from memlaw.model.memory_unit import LowRankUnit, gate_mask
from memlaw.train.preserve import fit_gate, output_penalty, protected_basis, replay_prompts, replay_text

PHONES = [
    {"id": 1, "query": "Ann Lee:", "target": "4821"},
    {"id": 2, "query": "Bob Ray:", "target": "90"},
    {"id": 3, "query": "Cy Wu:", "target": "377"},
    {"id": 4, "query": "Di Fox:", "target": "15"},
]


def test_replayed_inputs_are_disjoint_from_what_locality_measures():
    measured_prompts = set(builtin_prompts())
    assert not measured_prompts & set(replay_prompts()) and len(replay_prompts()) >= 32
    measured_sentences = {s.strip() for s in builtin_text().replace("\n", " ").split(".") if len(s.strip()) > 20}
    replayed_sentences = {s.strip() for s in replay_text().replace("\n", " ").split(".") if len(s.strip()) > 20}
    assert measured_sentences and replayed_sentences and not measured_sentences & replayed_sentences


def test_protected_basis_takes_the_fewest_directions_that_carry_the_energy():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    values = torch.tensor([50.0, 30.0, 10.0, 6.0, 3.0, 1.0], dtype=torch.float64)  # shares .5 .8 .9 .96 .99 1
    moment = (q * values) @ q.T
    for energy, k in [(0.49, 1), (0.79, 2), (0.85, 3), (0.89, 3), (0.95, 4), (0.999, 6)]:
        basis = protected_basis(moment.float(), energy)
        assert basis.shape == (6, k)
        assert torch.allclose(basis.T.double() @ q[:, :k], torch.diag(torch.sign(torch.diag(basis.T.double() @ q[:, :k]))),
                              atol=1e-5)
    a = torch.randn(6, 2)
    basis = protected_basis(moment.float(), 0.89)
    projected = a - basis @ (basis.T @ a)
    assert torch.allclose(basis.T @ projected, torch.zeros(3, 2), atol=1e-5)  # A cannot read the protected directions


def test_output_penalty_is_the_mean_squared_output_relative_to_the_mlp():
    torch.manual_seed(0)
    x, y = torch.randn(40, 8, dtype=torch.float64), torch.randn(40, 8, dtype=torch.float64)
    a, b = torch.randn(8, 3, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    moment, scale = x.T @ x / 40, float((y * y).sum(-1).mean())
    direct = ((x @ a @ b) ** 2).sum(-1).mean() / scale
    assert float(output_penalty(a, b, moment, scale)) == pytest.approx(float(direct), rel=1e-10)
    assert float(output_penalty(a, torch.zeros_like(b), moment, scale)) == 0.0


def test_config_validates_the_means():
    base = dict(data="x.jsonl")
    for bad, word in [({"preserve_weight": -1.0}, "preserve-weight"), ({"preserve_energy": 1.0}, "preserve-energy"),
                      ({"preserve_gate": -0.5}, "preserve-gate"), ({"preserve_gate": 1.0}, "preserve-gate"),
                      ({"preserve_gate": 0.5, "component": "lora"}, "preserve-gate"),
                      ({"preserve_gate": 0.5, "layer": [1, 2]}, "preserve-gate"),
                      ({"preserve_energy": 0.9, "component": "lora"}, "preserve-energy")]:
        with pytest.raises(MemlawError, match=word):
            TrainConfig(**base, **bad).validate()
    TrainConfig(**base, preserve_weight=2.0, preserve_energy=0.9).validate()


def _train(tiny_model_dir: Path, tmp: Path, name: str, *extra: str) -> Path:
    data = write_records(tmp / "phones.jsonl", PHONES)
    out = tmp / name
    assert main(["train", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out), "--layer", "1",
                 "--rank", "4", "--lr", "0.05", "--device", "cpu", "--epochs", "30", "--batch-size", "4",
                 "--dropout", "0", "--quiet", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("preserve")
    return {
        "plain": _train(tiny_model_dir, tmp, "plain"),
        "penalty": _train(tiny_model_dir, tmp, "penalty", "--preserve-weight", "20"),
        "project": _train(tiny_model_dir, tmp, "project", "--preserve-energy", "0.9"),
        "gate": _train(tiny_model_dir, tmp, "gate", "--preserve-gate", "0.5"),
        "kl": _train(tiny_model_dir, tmp, "kl", "--preserve-kl", "10"),
    }


def _locality(run: Path):
    from memlaw.memory import Memory

    return Memory.load(run).locality()


def test_each_means_is_recorded_and_logged(runs):
    plain = list(csv.DictReader((runs["plain"] / "train_log.csv").open()))
    assert "preserve_penalty" not in plain[0]  # the paper's run keeps its log's columns
    rows = list(csv.DictReader((runs["penalty"] / "train_log.csv").open()))
    penalties = [float(r["preserve_penalty"]) for r in rows]
    assert penalties[0] == 0.0 and max(penalties) > 0  # B = 0 at the first step: nothing to penalize yet
    config = (runs["penalty"] / "config.yaml").read_text()
    assert "preserve-weight: 20.0" in config and "preserve-energy: 0.0" in config


def test_projection_keeps_a_out_of_the_protected_directions(runs):
    from memlaw.memory import Memory
    from memlaw.train.preserve import collect_replayed

    memory = Memory.load(runs["project"])
    replayed = next(iter(collect_replayed(memory.session).values()))
    basis = protected_basis(replayed.moment, 0.9)
    a = next(p for n, p in memory.session.adapter.named_parameters() if n.endswith(".A"))
    assert 0 < basis.shape[1] < a.shape[0]
    a = a.detach()
    assert float((basis.T @ a).abs().max()) < 1e-4 * float(a.abs().max())


def test_the_penalty_quiets_the_unit_on_unrelated_text(runs):
    plain, penalty = _locality(runs["plain"]), _locality(runs["penalty"])
    assert plain.kl_text > 0 and penalty.kl_text < 0.5 * plain.kl_text


def test_a_zero_unit_with_the_means_on_still_changes_nothing(tiny_model_dir, tmp_path):
    from memlaw.evaluate.locality import measure_locality
    from memlaw.session import new_session
    from memlaw.train.preserve import Preserver

    data = write_records(tmp_path / "phones.jsonl", PHONES)
    session = new_session(TrainConfig(data=str(data), model=str(tiny_model_dir), layer=[1], rank=4, device="cpu",
                                      preserve_weight=1.0, preserve_energy=0.9, preserve_gate=0.5).validate())
    _, encoded = session.load_data()
    preserver = Preserver.for_session(session, encoded)  # projects A and fits the gate at the start; B is still zero
    assert float(preserver.loss().detach()) == 0.0
    loc = measure_locality(session)
    assert loc.kl_text == 0.0 and loc.kl_prompts == 0.0 and loc.unchanged == 1.0 and loc.ppl_change == 0.0


def test_locality_data_measures_on_the_users_prompts(runs, tmp_path, capsys):
    prompts = tmp_path / "mine.txt"
    prompts.write_text("What is my cat called?\n\nWhere do we meet on Fridays?\n", encoding="utf-8")
    assert main(["eval", str(runs["plain"]), "--out", str(tmp_path / "e1"), "--locality-data", str(prompts)]) == 0
    stored = json.loads((tmp_path / "e1" / "locality.json").read_text())
    assert stored["prompts"] == 2 and stored["source"] == str(prompts)
    jsonl = write_records(tmp_path / "mine.jsonl", [{"query": "What is my cat called?"}, {"query": "Hi?"}, {"query": "Ok"}])
    assert main(["eval", str(runs["plain"]), "--out", str(tmp_path / "e2"), "--locality-data", str(jsonl)]) == 0
    assert json.loads((tmp_path / "e2" / "locality.json").read_text())["prompts"] == 3
    capsys.readouterr()
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    assert main(["eval", str(runs["plain"]), "--out", str(tmp_path / "e3"), "--locality-data", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "empty.txt" in err and "no prompt" in err and "Traceback" not in err


def test_gate_mask_writes_only_where_the_score_exceeds_the_threshold():
    torch.manual_seed(0)
    unit = LowRankUnit(4, 2, gate=True)
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    with torch.no_grad():
        unit.B.normal_()
    assert torch.equal(unit(x), torch.zeros(3, 4))  # zero key and threshold: a gate not yet fit writes nowhere
    with torch.no_grad():
        unit.key.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        unit.threshold.fill_(1.0)
    assert gate_mask(x, unit.key, unit.threshold).squeeze(-1).tolist() == [False, False, True]  # strictly above
    out = unit(x)
    assert torch.equal(out[:2], torch.zeros(2, 4)) and torch.equal(out[2], x[2] @ unit.A @ unit.B)


def test_fit_gate_separates_records_from_replayed_inputs_and_places_the_threshold():
    torch.manual_seed(0)
    d = 16
    replayed = torch.randn(400, d)
    direction = torch.zeros(d)
    direction[3] = 1.0
    records = torch.randn(20, d) * 0.3 + 6 * direction  # apart along one direction
    for place in (0.2, 0.5, 0.8):
        gate = fit_gate(records, replayed, place)
        high, low = float((replayed @ gate.key).max()), float((records @ gate.key).min())
        assert high < gate.threshold < low and gate.leaks == 0 and gate.margin > 0
        assert gate.threshold == pytest.approx(high + place * (low - high), rel=1e-5)
    assert fit_gate(records, replayed, 0.5).key.equal(fit_gate(records, replayed, 0.5).key)  # deterministic
    mixed = torch.cat([records, replayed[:5]])  # five records that look like replayed inputs: no gap
    gate = fit_gate(mixed, replayed, 0.5)
    assert gate.margin < 0 and gate.leaks > 0
    assert bool(((mixed @ gate.key) > gate.threshold).all())  # every record still fires


def test_the_gate_writes_only_where_its_key_fires_and_is_saved(runs):
    from memlaw.memory import Memory
    from memlaw.model.memory_unit import UnitMLP
    from memlaw.train.preserve import replay_sequences

    spec = json.loads((runs["gate"] / "adapter.json").read_text())
    assert spec["gate"] is True
    assert json.loads((runs["plain"] / "adapter.json").read_text())["gate"] is False
    state = json.loads((runs["gate"] / "train_state.json").read_text())
    memory = Memory.load(runs["gate"])
    session = memory.session
    unit = next(m.unit for m in session.adapter.model.modules() if isinstance(m, UnitMLP))
    assert float(unit.key.abs().max()) > 0 and float(unit.B.abs().max()) > 0  # saved and loaded with the unit
    seen = []
    handle = unit.register_forward_hook(lambda m, i, o: seen.append((i[0].detach(), o.detach())))
    session.adapter.set_training(False)
    with torch.no_grad():
        for seq in replay_sequences(session):
            session.adapter.model(input_ids=torch.tensor([seq]))
    handle.remove()
    x, out = torch.cat([i[0] for i, _ in seen]), torch.cat([o[0] for _, o in seen])  # (positions, d)
    fires = (x.float() @ unit.key > unit.threshold)
    assert torch.equal(out[~fires], torch.zeros_like(out[~fires]))  # exactly no output where the key does not fire
    assert bool((out[fires].abs().amax(-1) > 0).all())
    # the random tiny model's records are not linearly apart from every replayed input: the state counts the leaks
    assert int(fires.sum()) == state["gate_leaks"] and (state["gate_leaks"] > 0) == (state["gate_margin"] < 0)


def test_the_replay_kl_keeps_unrelated_answers_closer_to_the_base_model(runs):
    plain, kl = _locality(runs["plain"]), _locality(runs["kl"])
    assert kl.kl_prompts < plain.kl_prompts
    rows = list(csv.DictReader((runs["kl"] / "train_log.csv").open()))
    assert float(rows[0]["preserve_penalty"]) == 0.0 and max(float(r["preserve_penalty"]) for r in rows) > 0
