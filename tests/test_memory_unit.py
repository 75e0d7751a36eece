"""The memory unit: identity at step 0, parameter count, save/load round trip, PEFT format."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import HIDDEN, make_model
from memlaw.errors import MemlawError
from memlaw.model.memory_unit import AdapterSpec, LowRankUnit, attach_adapter, detach_adapter, load_adapter


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture
def ids():
    return torch.randint(5, 200, (2, 12), generator=torch.Generator().manual_seed(1))


def attach(model, component="mlp", layers=(1,), rank=4, seed=None, **kw):
    """A fresh adapter on `model`, its spec resolved for that model."""
    return attach_adapter(model, AdapterSpec.for_model(model, component, layers, rank, **kw), seed=seed)


def perturb(handle):
    """Give every adapter weight a nonzero value so the unit is no longer the identity."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in handle.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("component", ["mlp", "lora"])
def test_identity_at_step_zero(kind, component, ids):
    base = make_model(kind)
    expected = logits(base, ids)
    handle = attach(base, component, layers=(0, 2), seed=3)
    assert torch.equal(logits(handle.model, ids), expected)
    perturb(handle)
    assert not torch.allclose(logits(handle.model, ids), expected)
    with handle.disabled():
        assert torch.equal(logits(handle.model, ids), expected)


@pytest.mark.parametrize("component", ["mlp", "lora"])
def test_detach_gives_back_the_base_model_for_the_next_run(component, ids):
    """A sweep worker reuses one loaded model: after a trained unit is detached the model is the base model
    again (same modules, weights, outputs), and the next seeded unit starts exactly as on a fresh model."""
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = logits(model, ids)
    handle = attach(model, component, layers=(0, 2), seed=3)
    perturb(handle)
    base = detach_adapter(handle)
    assert base.state_dict().keys() == before.keys()
    assert all(torch.equal(base.state_dict()[k], v) for k, v in before.items())
    assert torch.equal(logits(base, ids), expected) and not any(p.requires_grad for p in base.parameters())
    again, fresh = attach(base, component, layers=(0, 2), seed=5), attach(make_model(), component, layers=(0, 2), seed=5)
    assert again.state_dict().keys() == fresh.state_dict().keys()
    assert all(torch.equal(again.state_dict()[k], v) for k, v in fresh.state_dict().items())


def test_mlp_unit_shapes_init_and_param_count():
    model = make_model("llama")
    d = model.config.hidden_size
    handle = attach(model, "mlp", layers=(0, 2), rank=5)
    assert handle.num_parameters() == 2 * d * 5 * 2 == handle.spec.trainable_params
    unit = model.model.layers[0].mlp.unit
    assert isinstance(unit, LowRankUnit)
    assert unit.A.shape == (d, 5) and unit.B.shape == (5, d)
    assert torch.count_nonzero(unit.B) == 0
    bound = 1 / 5**0.5  # Kaiming-uniform(a=sqrt 5) on the d×r tensor: fan_in = r (the reference's scale)
    assert unit.A.abs().max() <= bound and unit.A.abs().max() > 0.5 * bound
    # only the unit trains; the base model is frozen
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".units." not in n)
    # the saved names: a file format (every committed adapter.safetensors), whatever the module attribute is called
    assert sorted(handle.state_dict()) == [f"model.layers.{k}.mlp.memory.{t}" for k in (0, 2) for t in "AB"]


def test_mlp_unit_adds_x_A_B_to_mlp_output():
    model = make_model("llama")
    handle = attach(model, "mlp", layers=(1,), rank=3, dropout=0.0)
    perturb(handle)
    wrapped = model.model.layers[1].mlp
    x = torch.randn(2, 4, model.config.hidden_size)
    with torch.no_grad():
        expected = wrapped.mlp(x) + x @ wrapped.unit.A @ wrapped.unit.B
        assert torch.allclose(wrapped(x), expected, atol=1e-6)


def test_lora_on_chosen_layers_only():
    model = make_model("llama")
    handle = attach(model, "lora", layers=(1,), rank=2, target_modules=["q_proj", "down_proj"])
    names = [n for n, _ in handle.named_parameters()]
    assert names and all(".layers.1." in n for n in names)
    assert {n.split(".")[-4] for n in names} == {"q_proj", "down_proj"}


@pytest.mark.parametrize("component", ["mlp", "lora"])
def test_save_load_round_trip_identical_logits(tmp_path, component, ids):
    trained = attach(make_model("llama"), component, layers=(0, 1), rank=3, seed=1)
    perturb(trained)
    trained.save(tmp_path)
    desc = json.loads((tmp_path / "adapter.json").read_text())
    assert desc["component"] == component and desc["layers"] == [0, 1] and desc["rank"] == 3
    assert desc["hidden_size"] == HIDDEN and desc["num_layers"] == 3
    reloaded = load_adapter(make_model("llama"), tmp_path)  # a fresh base model
    assert torch.equal(logits(reloaded.model, ids), logits(trained.model, ids))


def test_lora_saved_in_peft_format_loads_with_peft(tmp_path, ids):
    from peft import PeftModel

    trained = attach(make_model("llama"), "lora", layers=(2,), rank=2, target_modules=["v_proj"])
    perturb(trained)
    trained.save(tmp_path)
    peft_model = PeftModel.from_pretrained(make_model("llama"), tmp_path / "peft")
    assert torch.allclose(logits(peft_model, ids), logits(trained.model, ids), atol=1e-6)


def test_safetensors_only(tmp_path):
    trained = attach(make_model("llama"), "mlp")
    trained.save(tmp_path)
    assert (tmp_path / "adapter.safetensors").read_bytes()[8:9] == b"{"  # safetensors header, not a pickle
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))


def test_load_rejects_mismatched_adapter(tmp_path):
    attach(make_model("llama"), "mlp", layers=(1,)).save(tmp_path)
    desc = json.loads((tmp_path / "adapter.json").read_text())
    desc["layers"] = [2]
    (tmp_path / "adapter.json").write_text(json.dumps(desc))
    with pytest.raises(MemlawError, match="does not match"):
        load_adapter(make_model("llama"), tmp_path)


def test_layer_out_of_range_and_unknown_module():
    with pytest.raises(MemlawError, match=r"layer 3 is out of range.*0\.\.2"):
        attach(make_model("llama"), "mlp", layers=(3,))
    with pytest.raises(MemlawError, match="no module named foo_proj"):
        attach(make_model("llama"), "lora", layers=(0,), target_modules=["foo_proj"])


def test_a_units_own_random_stream_gives_the_global_generators_numbers():
    """UnitRandom seeded s: A's init and the dropout masks equal torch.manual_seed(s)'s, so a run alone trains
    as before, and two units with their own streams do not draw from each other's."""
    from memlaw.model.memory_unit import LowRankUnit, UnitRandom

    x = torch.randn(3, 5, 16)
    torch.manual_seed(7)
    plain = LowRankUnit(16, 4, dropout=0.3)
    with torch.no_grad():
        plain.B.normal_(generator=torch.Generator().manual_seed(1))
    plain.train()
    expected = [plain(x), plain(x)]
    own = LowRankUnit(16, 4, dropout=0.3, random=UnitRandom(7))
    other = LowRankUnit(16, 4, dropout=0.3, random=UnitRandom(8))
    with torch.no_grad():
        own.B.copy_(plain.B)
        other.B.copy_(plain.B)
    own.train()
    other.train()
    assert torch.equal(own.A, plain.A)
    torch.manual_seed(123)  # the global generator moves on: the unit's stream does not care
    first = own(x)
    other(x)  # another run's unit draws between two of ours
    assert torch.equal(first, expected[0]) and torch.equal(own(x), expected[1])
    own.eval()
    assert torch.equal(own(x), x @ own.A @ own.B)  # no dropout in evaluation
