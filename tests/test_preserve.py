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
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    values = torch.tensor([50.0, 30.0, 10.0, 6.0, 3.0, 1.0], dtype=torch.float64)  # shares .5 .8 .9 .96 .99 1
    moment = (q * values) @ q.T
    for energy, k in [(0.5, 1), (0.79, 2), (0.85, 3), (0.9, 3), (0.95, 4), (0.999, 6)]:
        basis = protected_basis(moment.float(), energy)
        assert basis.shape == (6, k)
        assert torch.allclose(basis.T.double() @ q[:, :k], torch.diag(torch.sign(torch.diag(basis.T.double() @ q[:, :k]))),
                              atol=1e-5)
    a = torch.randn(6, 2)
    basis = protected_basis(moment.float(), 0.9)
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
