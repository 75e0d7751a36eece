"""The frozen-prefix cache computes what the full forward computes: losses, gradients, metrics."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_model, make_tokenizer, save_tiny, write_records
from memlaw.cli import main
from memlaw.data.encoding import encode_record
from memlaw.data.records import Record
from memlaw.model.forward import AnswerForward, head_cross_entropy, token_losses
from memlaw.model.memory_unit import AdapterSpec, LowRankUnit, attach_adapter
from memlaw.model.prefix_cache import PrefixCache, unsupported_reason

QUERIES = ["Ann Lee:", "Bob Ray the Second:", "Cy:", "Di Fox:"]
MIXED = ["4821", "90", "3771234", "15"]  # different prompt and target lengths -> left padding
EQUAL_Q = ["Ann Lee:", "Bob Ray:", "Cyd Wux:", "Di Foxy:"]  # equal prompt and target lengths: no padding


def adapted(kind: str, component: str, layers: list[int], seed: int = 0, device: str = "cpu",
            dtype: torch.dtype = torch.float32):
    """A tiny model with a memory unit whose output is non-zero (B / lora_B randomized)."""
    tok = make_tokenizer()
    model = make_model(kind, vocab_size=len(tok), layers=4, seed=seed).to(device=device, dtype=dtype)
    spec = AdapterSpec.for_model(model, component, layers, rank=4, target_modules=["q_proj", "v_proj", "down_proj"])
    adapter = attach_adapter(model, spec, seed=seed)
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if name.endswith(".B") or "lora_B" in name:
                p.normal_(0, 0.2)
    return tok, adapter


def losses_and_grads(forward: AnswerForward, adapter) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    adapter.model.zero_grad(set_to_none=True)
    tokens = forward(list(range(len(forward))))
    mask = tokens.batch.target_mask
    (tokens.losses[mask] * torch.linspace(0.5, 1.5, int(mask.sum()), device=mask.device)).sum().backward()  # unequal token weights
    grads = {name: p.grad.clone() for name, p in adapter.named_parameters()}
    return tokens.losses.detach(), mask, grads


def full_and_cached(adapter, encoded, pad_id, start: int, device: str = "cpu", store: str = "cpu", batch_size: int = 3):
    """The full forward, a cache of layer `start`'s inputs, and the forward through that cache."""
    full = AnswerForward(adapter.model, encoded, pad_id, device)
    cache = PrefixCache.build(adapter.model, start, encoded, pad_id, torch.device(device), batch_size, torch.device(store))
    return full, cache, AnswerForward(adapter.model, encoded, pad_id, device, cache)


def assert_cache_matches_full(adapter, encoded, pad_id, start: int, device: str = "cpu", store: str = "cpu",
                              atol: float = 1e-5, grad_rtol: float = 1e-4) -> PrefixCache:
    """Per-token losses and every adapter gradient through the cache equal the full forward's."""
    full, cache, cached = full_and_cached(adapter, encoded, pad_id, start, device, store)
    loss_full, mask, grads_full = losses_and_grads(full, adapter)
    loss_cached, mask_cached, grads_cached = losses_and_grads(cached, adapter)
    assert torch.equal(mask, mask_cached)
    assert torch.allclose(loss_full[mask], loss_cached[mask], atol=atol, rtol=atol)
    assert grads_full.keys() == grads_cached.keys() and grads_full
    for name, g in grads_full.items():
        assert g.abs().max() > 0, name  # the adapter does get a gradient
        assert torch.allclose(g, grads_cached[name], atol=atol * g.abs().max(), rtol=grad_rtol), name  # summation order varies with threads
    return cache


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen2-sliding", "qwen3", "mistral"])
@pytest.mark.parametrize("component,layers", [("mlp", [2]), ("lora", [1, 3])])
@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
def test_cache_equals_full_forward(kind, component, layers, padded):
    tok, adapter = adapted(kind, component, layers)
    queries, targets = (QUERIES, MIXED) if padded else (EQUAL_Q, ["12345678"] * 4)
    encoded = [encode_record(tok, Record(q, t)) for q, t in zip(queries, targets)]
    total = {len(e.prompt_ids) + len(e.target_ids) for e in encoded}
    assert (len(total) > 1) == padded
    assert unsupported_reason(adapter.model) is None

    cache = assert_cache_matches_full(adapter, encoded, tok.pad_token_id, min(layers))
    assert len(cache.hidden) == len(encoded) and cache.hidden[0].shape[-1] == 64
    assert cache.prefix_len > 0  # the chat template's opening runs once per batch


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@CUDA
@pytest.mark.parametrize("kind", ["llama", "qwen2-sliding", "qwen3"])
@pytest.mark.parametrize("store", ["cuda", "cpu"])
def test_cache_equals_full_forward_on_cuda(kind, store):
    """On a GPU, with the cache on the GPU or in CPU memory (copied per batch), float32."""
    tok, adapter = adapted(kind, "lora", [1, 3], device="cuda")
    encoded = [encode_record(tok, Record(q, t)) for q, t in zip(QUERIES, MIXED)]
    cache = assert_cache_matches_full(adapter, encoded, tok.pad_token_id, 1, "cuda", store, atol=1e-4, grad_rtol=1e-3)
    assert cache.prefix_len > 0 and cache.hidden[0].device.type == store


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("kind", ["llama", "qwen2-sliding"])
def test_cache_matches_full_forward_in_bfloat16(kind, device):
    """bfloat16 base model, float32 memory: the two paths round differently, so they agree to bfloat16 precision."""
    tok, adapter = adapted(kind, "mlp", [2], device=device, dtype=torch.bfloat16)
    encoded = [encode_record(tok, Record(q, t)) for q, t in zip(QUERIES, MIXED)]
    full, cache, cached = full_and_cached(adapter, encoded, tok.pad_token_id, 2, device, device)
    assert cache.hidden[0].dtype == torch.bfloat16 and cache.prefix_len > 0
    loss_full, mask, grads_full = losses_and_grads(full, adapter)
    loss_cached, _, grads_cached = losses_and_grads(cached, adapter)
    assert torch.allclose(loss_full[mask], loss_cached[mask], atol=0.05, rtol=0.02)
    for name, g in grads_full.items():
        assert g.dtype == torch.float32 and g.abs().max() > 0, name
        cosine = torch.nn.functional.cosine_similarity(g.flatten(), grads_cached[name].flatten(), dim=0)
        assert cosine > 0.99, (name, float(cosine))


@pytest.mark.parametrize("kind", ["llama", "qwen2-sliding", "mistral"])
def test_shared_prefix_with_eager_attention(kind):
    """The explicit masks of the shared-prefix path also serve the eager implementation (additive masks)."""
    tok, adapter = adapted(kind, "mlp", [1])
    adapter.model.config._attn_implementation = "eager"
    encoded = [encode_record(tok, Record(q, t)) for q, t in zip(QUERIES, MIXED)]
    assert assert_cache_matches_full(adapter, encoded, tok.pad_token_id, 1).prefix_len > 0


def test_records_sharing_most_of_their_prompt():
    """A long shared prefix (system text) and records that differ only near the end; sliding window 6."""
    tok, adapter = adapted("qwen2-sliding", "lora", [1, 2])
    queries = ["Phone book entry number seven: " + q for q in QUERIES]
    encoded = [encode_record(tok, Record(q, t)) for q, t in zip(queries, MIXED)]
    cache = assert_cache_matches_full(adapter, encoded, tok.pad_token_id, 1)
    assert cache.prefix_len > 30 and min(len(e.prompt_ids) for e in encoded) - cache.prefix_len >= 1


def test_no_shared_prefix_runs_the_plain_path():
    """Raw prompts that differ at the first token, and a single record, share nothing."""
    tok, adapter = adapted("llama", "mlp", [2])
    encoded = [encode_record(tok, Record(q, t), chat_template=False) for q, t in zip(QUERIES, MIXED)]
    assert assert_cache_matches_full(adapter, encoded, tok.pad_token_id, 2).prefix_len == 0
    assert assert_cache_matches_full(adapter, encoded[:1], tok.pad_token_id, 2).prefix_len == 0


def reseed_units(adapter, seed: int) -> None:
    """Restart the units' own random stream (their dropout masks; memory_unit.UnitRandom)."""
    for module in adapter.model.modules():
        if isinstance(module, LowRankUnit):
            module.random.cpu.manual_seed(seed)


def test_active_dropout_gives_each_record_its_own_prefix():
    """With dropout on, the cache draws the same dropout masks as the full forward (same seed)."""
    tok = make_tokenizer()
    model = make_model("llama", vocab_size=len(tok), layers=4)
    adapter = attach_adapter(model, AdapterSpec.for_model(model, "mlp", [2], rank=4, dropout=0.5), seed=0)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if name.endswith(".B"):
                p.normal_(0, 0.2)
    adapter.set_training(True)
    encoded = [encode_record(tok, Record(q, t)) for q, t in zip(QUERIES, MIXED)]
    full, cache, cached = full_and_cached(adapter, encoded, tok.pad_token_id, 2, batch_size=4)
    assert cache.prefix_len > 0
    reseed_units(adapter, 7)
    loss_full, mask, grads_full = losses_and_grads(full, adapter)
    reseed_units(adapter, 7)
    loss_cached, _, grads_cached = losses_and_grads(cached, adapter)
    assert torch.allclose(loss_full[mask], loss_cached[mask], atol=1e-5, rtol=1e-5)
    for name, g in grads_full.items():
        assert torch.allclose(g, grads_cached[name], atol=1e-5, rtol=1e-4), name
    reseed_units(adapter, 8)  # another draw gives other losses: the dropout really is on
    assert not torch.allclose(losses_and_grads(cached, adapter)[0][mask], loss_full[mask])


def test_subset_batches_read_the_right_records():
    """A batch of some records (in any order) gets their cached states, not its neighbours'."""
    tok, adapter = adapted("llama", "mlp", [1])
    encoded = [encode_record(tok, Record(q, t)) for q, t in zip(QUERIES, MIXED)]
    full, _, cached = full_and_cached(adapter, encoded, tok.pad_token_id, 1, batch_size=4)
    with torch.no_grad():
        for idx in ([2, 0], [3], [1, 3, 0]):
            a, b = full(idx), cached(idx)
            mask = a.batch.target_mask
            assert torch.allclose(a.losses[mask], b.losses[mask], atol=1e-5)
            assert torch.equal(a.correct, b.correct)


def test_unsupported_architecture_is_named():
    tok = make_tokenizer()
    model = make_model("gemma", vocab_size=len(tok))
    adapter = attach_adapter(model, AdapterSpec.for_model(model, "mlp", [1], rank=2))
    assert "gemma" in unsupported_reason(adapter.model)


def pb_rows(n: int = 6) -> list[dict]:
    return [{"id": i, "query": f"Person {i}:", "target": f"{(i * 7919) % 100000:05d}"} for i in range(n)]


def run_train(model_dir, data, out, *flags) -> dict:
    argv = ["train", "--data", str(data), "--model", str(model_dir), "--out", str(out), "--rank", "4",
            "--epochs", "6", "--batch-size", "3", "--lr", "0.05", "--dropout", "0.1", "--quiet", *flags]
    assert main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


METRIC_KEYS = ["exact_match", "token_accuracy", "certified_fraction", "stubborn_tokens", "steps",
               "initial_loss", "final_loss", "delta_loss", "loss_bits"]


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_run_metrics_same_with_and_without_cache(kind, tmp_path, capsys):
    """Same config and seed (dropout on): the cache changes speed, not results."""
    model_dir = save_tiny(tmp_path / kind, kind)
    data = write_records(tmp_path / "pb.jsonl", pb_rows())
    on = run_train(model_dir, data, tmp_path / "on")
    off = run_train(model_dir, data, tmp_path / "off", "--no-prefix-cache")
    assert "prefix cache off" not in capsys.readouterr().err
    for key in METRIC_KEYS:
        assert on[key] == pytest.approx(off[key], rel=1e-4, abs=1e-5), key
    assert on["delta_loss"] > 0


def test_fallbacks_print_one_notice_and_still_train(tmp_path, capsys):
    data = write_records(tmp_path / "pb.jsonl", pb_rows(3))
    gemma = tmp_path / "gemma"
    tok = make_tokenizer()
    make_model("gemma", vocab_size=len(tok)).save_pretrained(gemma)
    tok.save_pretrained(gemma)
    run_train(gemma, data, tmp_path / "g")
    notices = [line for line in capsys.readouterr().err.splitlines() if "prefix cache off" in line]
    assert len(notices) == 1 and "gemma" in notices[0]

    llama = save_tiny(tmp_path / "llama", "llama")
    bounded = run_train(llama, data, tmp_path / "b", "--prefix-cache-max-mb", "0.001")
    notices = [line for line in capsys.readouterr().err.splitlines() if "prefix cache off" in line]
    assert len(notices) == 1 and "prefix-cache-max-mb" in notices[0]
    on_cpu = run_train(llama, data, tmp_path / "c", "--prefix-cache-device", "cpu")
    assert "prefix cache off" not in capsys.readouterr().err
    assert bounded["final_loss"] == pytest.approx(on_cpu["final_loss"], rel=1e-4)


def test_cache_size_is_what_the_bound_checks():
    tok, adapter = adapted("llama", "mlp", [1])
    encoded = [encode_record(tok, Record(q, t)) for q, t in zip(QUERIES, MIXED)]
    cache = PrefixCache.build(adapter.model, 1, encoded, tok.pad_token_id, torch.device("cpu"), 2, torch.device("cpu"))
    held = sum(h.numel() * h.element_size() for h in [cache.shared, *cache.hidden])
    assert cache.prefix_len > 0  # the chat template's opening is stored once
    assert PrefixCache.size_bytes(adapter.model, encoded) == held


def test_sweep_cell_same_rows_with_and_without_cache(tiny_model_dir, tmp_path):
    from memlaw.sweep import TIMING_COLUMNS, parse_grid, run_sweep

    def rows(prefix_cache: bool):
        grid = parse_grid({
            "name": "cache", "model": str(tiny_model_dir), "benchmark": "phonebook", "methods": ["sft", "memft_ot"],
            "ranks": [2], "lengths": [30], "seeds": [7], "layer": 1,
            "train": {"lr": 0.05, "epochs": 3, "batch_size": 2, "dropout": 0.1, "device": "cpu",
                      "prefix_cache": prefix_cache},
        }, "grid.yaml")
        frame = run_sweep(grid, tmp_path / f"cache-{prefix_cache}", progress=False)
        return frame.drop(columns=[*TIMING_COLUMNS, "run_dir"]).reset_index(drop=True)

    on, off = rows(True), rows(False)
    assert (on["status"] == "ok").all() and len(on) == 2
    exact = ["cell", "method", "n_records", "target_tokens", "exact_match", "stubborn_tokens", "certified_fraction", "steps"]
    assert on[exact].equals(off[exact])
    for column in ("initial_loss", "final_loss", "delta_loss", "token_accuracy", "loss_bits"):
        assert on[column].to_numpy() == pytest.approx(off[column].to_numpy(), rel=1e-4, abs=1e-6), column


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_head_cross_entropy_matches_autograd(dtype, device):
    """The fused head: same losses, argmax and hidden-state gradient as lm_head + cross-entropy, with
    zero-weight tokens (MemFT) and padding; rows with no gradient are skipped, not mis-scored."""
    from memlaw.data.encoding import IGNORE

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False).to(device, dtype).requires_grad_(False)
    hidden = torch.randn(3, 5, 16, dtype=dtype).to(device)
    labels = torch.randint(0, 50, (3, 5)).to(device)
    labels[0, :2] = IGNORE
    labels[1, 1] = int(head(hidden[1, 1]).argmax())  # one token the head already predicts
    weights = torch.tensor([[0, 0, 1, 0.5, 2], [1, 0, 0, 3, 1], [0, 0, 0, 0, 0.25]], device=device)

    h1 = hidden.clone().requires_grad_(True)
    losses, correct = head_cross_entropy(head, h1, labels)
    (losses * weights).sum().backward()
    h2 = hidden.clone().requires_grad_(True)
    logits = head(h2)
    expected = token_losses(logits, labels)
    (expected * weights).sum().backward()

    assert losses.dtype == torch.float32 and torch.allclose(losses, expected, atol=1e-5)
    assert torch.equal(correct, logits.argmax(-1) == labels) and correct[1, 1] and not correct[0, :2].any()
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert torch.allclose(h1.grad.float(), h2.grad.float(), atol=tol)
    assert (h1.grad[weights == 0] == 0).all() and (h1.grad[weights != 0] != 0).any(-1).all()


def test_head_cross_entropy_trains_an_unfrozen_head():
    """A head that has a bias or is trainable takes the plain path and gets its gradient."""
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 20, bias=True)
    hidden, labels = torch.randn(2, 3, 8), torch.randint(0, 20, (2, 3))
    losses, correct = head_cross_entropy(head, hidden, labels)
    losses.sum().backward()
    assert head.weight.grad is not None and head.bias.grad.abs().sum() > 0
    assert torch.allclose(losses, token_losses(head(hidden), labels))
