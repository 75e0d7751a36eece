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
from memlaw.model.memory_unit import LowRankMemory, gate_read
from memlaw.train.preserve import output_penalty, protected_basis, replay_prompts, replay_text

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
                      ({"preserve_gate": -0.5}, "preserve-gate"), ({"preserve_gate": 1.0, "component": "lora"}, "preserve-gate"),
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
        "gate": _train(tiny_model_dir, tmp, "gate", "--preserve-gate", "1.0"),
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
                                      preserve_weight=1.0, preserve_energy=0.9).validate())
    preserver = Preserver.for_session(session)  # projects A at the start; B is still zero
    assert float(preserver.loss()) == 0.0
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


def test_gate_read_passes_only_what_exceeds_the_threshold():
    z = torch.tensor([[0.5, -3.0], [-2.0, 0.1]])
    tau = torch.tensor([1.0, 0.0])  # component 1 ungated
    assert torch.equal(gate_read(z, tau), torch.tensor([[0.0, -3.0], [-1.0, 0.1]]))
    assert torch.equal(gate_read(z, torch.zeros(2)), z)


def test_a_gated_unit_trains_straight_through_and_evaluates_as_it_trains():
    torch.manual_seed(0)
    unit = LowRankMemory(6, 2, gate=True)
    x = torch.randn(5, 6)
    with torch.no_grad():
        unit.threshold.copy_((x @ unit.A).abs().amax(0) * 2)  # every input below its threshold
    unit.train()
    out = unit(x)
    out.pow(2).sum().backward()
    assert torch.equal(out, torch.zeros(5, 6))  # the hard gate's value, even in training
    loss = (unit(x) - 1).pow(2).sum()  # B = 0 and every read gated: the straight-through gradient still moves B
    unit.B.grad = None
    loss.backward()
    assert float(unit.B.grad.abs().sum()) > 0
    with torch.no_grad():
        unit.B.normal_()
        unit.threshold.mul_(0.3)
    unit.eval()
    evaluated = unit(x)
    unit.train()
    assert torch.equal(unit(x), evaluated)  # dropout 0: the certificate sees what training saw


def test_the_gate_silences_every_replayed_input_and_is_saved(runs):
    from memlaw.memory import Memory
    from memlaw.model.memory_unit import MemoryMLP
    from memlaw.train.preserve import replay_sequences

    spec = json.loads((runs["gate"] / "adapter.json").read_text())
    assert spec["gate"] is True
    assert json.loads((runs["plain"] / "adapter.json").read_text())["gate"] is False
    memory = Memory.load(runs["gate"])
    session = memory.session
    unit = next(m.memory for m in session.adapter.model.modules() if isinstance(m, MemoryMLP))
    assert float(unit.threshold.min()) > 0 and float(unit.B.abs().max()) > 0
    outputs = []
    handle = unit.register_forward_hook(lambda m, i, o: outputs.append(o.detach()))
    session.adapter.set_training(False)
    with torch.no_grad():
        for seq in replay_sequences(session)[:6]:
            session.adapter.model(input_ids=torch.tensor([seq]))
    handle.remove()
    assert outputs and all(float(o.abs().max()) == 0.0 for o in outputs)  # gate 1.0: exactly no output there


def test_the_replay_kl_keeps_unrelated_answers_closer_to_the_base_model(runs):
    plain, kl = _locality(runs["plain"]), _locality(runs["kl"])
    assert kl.kl_prompts < plain.kl_prompts
    rows = list(csv.DictReader((runs["kl"] / "train_log.csv").open()))
    assert float(rows[0]["preserve_penalty"]) == 0.0 and max(float(r["preserve_penalty"]) for r in rows) > 0
