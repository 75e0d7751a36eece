"""Typed run configuration: one dataclass, validated field by field.

YAML keys are the flag names (``batch-size`` or ``batch_size``); command-line flags
override YAML values, which override the defaults.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import MemlawError

# A token counts as recalled when its teacher-forced probability p_t exceeds this: the certificate's bound (above
# 0.5 the target beats every other token, so greedy decoding produces it) and MemFT's default threshold (its critical
# loss -ln 0.5 marks the tokens not yet recalled). One name for the two, since they mean the same.
RECALL_P = 0.5
COMPONENTS = ("mlp", "lora")
A_INITS = ("reference", "linear")
STOP_WHEN = ("never", "certified")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
CACHE_DEVICES = ("model", "cpu")
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# `memlaw memorize` and memlaw.memorize(): SFT until every record is certified, within a step budget. SFT
# because with certified stopping it reaches the certificate sooner than MemFT-OT under the reference's
# defaults (16 records/rank 8: 123 vs 155 steps; 48 records/rank 16: 255 vs 444 steps, 1.4x less wall time;
# docs/benchmarks.md). No dropout: it is the reference recipe's regularizer, and here it only delays
# certification and turns off the shared-prompt and check-skipping shortcuts.
MEMORIZE_DEFAULTS = {"method": "sft", "stop_when": "certified", "max_steps": 2000, "epochs": 10000, "dropout": 0.0,
                     "preserve_gate": 0.5}  # the unit writes only at its records' positions (docs/benchmarks.md, "Locality")

# `memlaw capacity`: probes use MemFT-OT with certified stopping within a step budget.
CAPACITY_DEFAULTS = {"method": "memft_ot", "max_steps": 300, "epochs": 10000, "data": "(generated per probe)"}


def field_error(name: str, why: str) -> MemlawError:
    """The one-line error for a bad config field (the flag's spelling)."""
    return MemlawError(f"config field '{name.replace('_', '-')}': {why}")


def _help(text: str, flag: bool = True, **kw: Any) -> Any:
    """A field with its help text; `flag=False`: recorded in config.yaml by memlaw, no command-line flag."""
    return field(metadata={"help": text, "flag": flag}, **kw)


@dataclass
class TrainConfig:
    """Everything that determines a training run (and so its results)."""

    data: str = _help("Records JSONL (query/target, PhoneBook or Long-Context format).", default="")
    model: str = _help("'default' (embedded SmolLM2-135M-Instruct), a local HF model dir or a hub id.", default="default")
    device: str = _help("auto | cpu | cuda.", default="auto")
    dtype: str = _help(
        "auto (bfloat16 on CUDA and on a CPU with native bf16 matrix products, e.g. AVX512-BF16 or AMX; "
        "float32 on other CPUs) | float32 | bfloat16 | float16. The memory unit always trains in float32.",
        default="auto",
    )
    dtype_reason: str | None = _help(
        "Written by memlaw into config.yaml, not read: how the dtype was chosen (e.g. 'auto: this CPU runs "
        "bf16 matrix products natively (avx512_bf16)').",
        flag=False,
        default=None,
    )
    trust_remote_code: bool = _help("Allow custom model code from the model directory/hub.", default=False)
    component: str = _help("mlp: the paper's parallel low-rank map on the MLP block; lora: PEFT LoRA on linear modules.", default="mlp")
    layer: list[int] | None = _help("Decoder layer index(es) of the memory unit; default about 2/3 of the depth.", default=None)
    rank: int = _help("Rank r of the low-rank memory.", default=8)
    dropout: float = _help("Dropout on the memory unit's output (lora: lora_dropout).", default=0.1)
    a_init: str = _help(
        "mlp: initial scale of A. reference: kaiming_uniform_(a=√5) on the d×r tensor, A ~ U(±1/√r), as the "
        "paper's code; linear: an nn.Linear(d, r) weight's U(±1/√d).",
        default="reference",
    )
    target_modules: list[str] = _help(
        "lora only: linear modules to adapt in the chosen layers.", default_factory=lambda: list(LORA_MODULES)
    )
    lora_alpha: float | None = _help("lora only: scaling alpha (default: equal to rank, i.e. scale 1).", default=None)
    method: str = _help(
        "Training method, a name registered in memlaw.train.method (the paper's: sft | memft_ot | memft_sw).", default="sft"
    )
    threshold_p: float = _help("MemFT: target probability threshold (L_crit = -ln p).", default=RECALL_P)
    position_weighting: bool = _help("memft_ot: weight a record's hard tokens by exp(-λ·i/(n-1)).", default=False)
    position_lambda: float = _help("memft_ot: λ of the position weighting.", default=2.0)
    zero_bp: bool = _help(
        "memft_ot: skip backward and update when no token of a step is above the threshold (the reference "
        "instead trains that step on the plain mean, the default). memft_sw's curriculum always skips.",
        default=False,
    )
    sw_mode: str = _help(
        "memft_sw: auto (curriculum for many records, sliding for one long record) | curriculum | sliding.", default="auto"
    )
    curriculum_ratios: list[float] = _help(
        "memft_sw curriculum: fraction of the (once-shuffled) records trained per stage.",
        default_factory=lambda: [0.2, 0.4, 0.6, 0.8, 1.0],
    )
    curriculum_boundaries: list[int] | None = _help(
        "memft_sw curriculum: epoch at which each stage ends (default 20,40,60,80,EPOCHS).", default=None
    )
    sw_scale: float = _help("memft_sw sliding: s in sigmoid(s·(L_t − L_crit)).", default=10.0)
    sw_window: int = _help("memft_sw sliding: base window W (tokens) after the anchor, times the expansion.", default=50)
    sw_tau: float = _help("memft_sw sliding: decay length τ inside the window.", default=20.0)
    sw_floor: float = _help("memft_sw sliding: weight multiplier beyond the window.", default=0.01)
    sw_patience: int = _help("memft_sw sliding: steps the anchor must stay put before the window expands.", default=3)
    sw_expand_step: float = _help("memft_sw sliding: expansion increment.", default=0.5)
    sw_expand_max: float = _help("memft_sw sliding: maximum expansion.", default=4.0)
    stop_when: str = _help("never | certified: stop once every record has p_t > 0.5 at every target token.", default="never")
    check_every: int = _help(
        "certified stopping: check every N optimizer steps (0: after each epoch whose training pass met no "
        "stubborn token; with dropout > 0, after every epoch).",
        default=0,
    )
    log_token_probs: int = _help(
        "Every N optimizer steps (and at step 0 and the last step) record the teacher-forced p_t of every "
        "answer token of every record in token_probs.safetensors; 0 records nothing.",
        default=0,
    )
    max_steps: int | None = _help("Step budget: stop after this many optimizer steps (default: epochs decide).", default=None)
    lr: float = _help("Peak learning rate (AdamW, linear decay to 0, no warm-up).", default=1e-2)
    epochs: int = _help("Number of passes over the records.", default=200)
    batch_size: int = _help("Records per micro-batch.", default=16)
    grad_accum: int = _help("Micro-batches per optimizer step.", default=1)
    weight_decay: float = _help("AdamW weight decay.", default=0.0)
    max_grad_norm: float = _help("Gradient-norm clipping (0 disables).", default=1.0)
    preserve_weight: float = _help(
        "Locality (mlp unit): weight of a penalty on the unit's output over replayed general text and prompts "
        "(its mean squared norm there, relative to the MLP's own output); 0: off, the paper's objective.",
        default=0.0,
    )
    preserve_kl: float = _help(
        "Locality (mlp unit): weight of KL(base || adapted) on the base model's own answers to replayed prompts, "
        "4 of them each step; 0: off, the paper's objective.",
        default=0.0,
    )
    preserve_gate: float = _help(
        "Locality (mlp unit at one layer): the unit writes only where a linear key, fit to tell the records' "
        "positions from replayed general inputs, fires; its threshold sits at this share (0 < g < 1) of the gap "
        "between the highest replayed score and the lowest record's; 0: off, the paper's unit.",
        default=0.0,
    )
    preserve_energy: float = _help(
        "Locality (mlp unit): keep A out of the input directions that carry this share of the replayed inputs' "
        "energy (A <- P·A at the start and after every step); 0: off, the paper's unit.",
        default=0.0,
    )
    seed: int = _help("Seed for initialization, shuffling and dropout.", default=42)
    chat_template: bool = _help("Wrap the query in the tokenizer's chat template (if it has one).", default=True)
    length: int | None = _help("Long-Context data: the target is the first LENGTH tokens of 'matching'.", default=None)
    eval_batch_size: int = _help("Records per batch in evaluation.", default=32)
    prefix_cache: bool = _help(
        "Compute the hidden states entering the lowest adapted layer once and run only the layers above it "
        "(Llama/Qwen2/Qwen3/Mistral); --no-prefix-cache runs the full forward every step.",
        default=True,
    )
    prefix_cache_max_mb: float = _help("Memory bound of the prefix cache in MiB; a larger cache falls back to the full forward.", default=4096.0)
    prefix_cache_device: str = _help("Where the prefix cache lives: model (the model's device) | cpu (copied per batch).", default="model")

    # ---------------------------------------------------------------- validation
    def validate(self) -> "TrainConfig":
        """Check every field but the method's own (memlaw.train.method checks those: its name and its fields);
        raise MemlawError naming the first bad one."""
        bad = field_error
        hints = typing.get_type_hints(TrainConfig)
        for f in fields(self):
            value = getattr(self, f.name)
            if not _has_type(value, hints[f.name]):
                raise bad(f.name, f"expected {_type_name(hints[f.name])}, got {value!r}")
        if not self.data:
            raise bad("data", "required (path to a records JSONL file)")
        if self.device not in DEVICES:
            raise bad("device", f"must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise bad("dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.a_init not in A_INITS:
            raise bad("a_init", f"must be one of {', '.join(A_INITS)}, got {self.a_init!r}")
        if self.component not in COMPONENTS:
            raise bad("component", f"unknown component {self.component!r}; choose from {', '.join(COMPONENTS)}")
        if self.prefix_cache_device not in CACHE_DEVICES:
            raise bad("prefix_cache_device", f"must be one of {', '.join(CACHE_DEVICES)}, got {self.prefix_cache_device!r}")
        if self.prefix_cache_max_mb <= 0:
            raise bad("prefix_cache_max_mb", f"must be > 0, got {self.prefix_cache_max_mb!r}")
        if self.stop_when not in STOP_WHEN:
            raise bad("stop_when", f"must be one of {', '.join(STOP_WHEN)}, got {self.stop_when!r}")
        if self.check_every < 0:
            raise bad("check_every", f"must be >= 0, got {self.check_every!r}")
        if self.log_token_probs < 0:
            raise bad("log_token_probs", f"must be >= 0, got {self.log_token_probs!r}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise bad("max_steps", f"must be a positive integer, got {self.max_steps!r}")
        for name in ("rank", "epochs", "batch_size", "grad_accum", "eval_batch_size"):
            value = getattr(self, name)
            if value <= 0:
                raise bad(name, f"must be a positive integer, got {value!r}")
        if self.length is not None and self.length <= 0:
            raise bad("length", f"must be a positive integer, got {self.length!r}")
        if self.lr <= 0:
            raise bad("lr", f"must be > 0, got {self.lr!r}")
        if not (0.0 <= self.dropout < 1.0):
            raise bad("dropout", f"must be in [0, 1), got {self.dropout!r}")
        if self.weight_decay < 0:
            raise bad("weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        if self.max_grad_norm < 0:
            raise bad("max_grad_norm", f"must be >= 0, got {self.max_grad_norm!r}")
        if self.preserve_weight < 0:
            raise bad("preserve_weight", f"must be >= 0, got {self.preserve_weight!r}")
        if self.preserve_kl < 0:
            raise bad("preserve_kl", f"must be >= 0, got {self.preserve_kl!r}")
        if not 0.0 <= self.preserve_gate < 1.0:
            raise bad("preserve_gate", f"must be in [0, 1) (0: off), got {self.preserve_gate!r}")
        if not 0.0 <= self.preserve_energy < 1.0:
            raise bad("preserve_energy", f"must be in [0, 1), got {self.preserve_energy!r}")
        means = [n for n in ("preserve_weight", "preserve_kl", "preserve_gate", "preserve_energy") if getattr(self, n)]
        off = " (memorize gates its unit by default: --preserve-gate 0 turns that off)" if means == ["preserve_gate"] else ""
        if means and self.component != "mlp":
            raise bad(means[0], f"the locality means act on the mlp unit's A and B; component lora has neither{off}")
        if self.preserve_gate and self.layer is not None and len(self.layer) > 1:
            raise bad("preserve_gate", "the gate is fit on its unit's own input, which holds for a unit at one layer; "
                      f"got layers {self.layer}{off}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise bad("lora_alpha", f"must be > 0, got {self.lora_alpha!r}")
        if self.layer is not None:
            if not self.layer:
                raise bad("layer", "must name at least one layer index")
            if len(set(self.layer)) != len(self.layer):
                raise bad("layer", f"repeated layer index in {self.layer!r}")
        if self.component == "lora":
            unknown = [m for m in self.target_modules if m not in LORA_MODULES]
            if not self.target_modules or unknown:
                raise bad(
                    "target_modules",
                    f"unknown module name(s) {unknown or self.target_modules!r}; choose from {', '.join(LORA_MODULES)}",
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}


def _has_type(value: Any, tp: Any) -> bool:
    """isinstance for the annotations used in TrainConfig (bool is not an int here; int is a float)."""
    if tp is type(None):
        return value is None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, arg) for arg in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_has_type(v, item) for v in value)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


FIELD_NAMES = {f.name for f in fields(TrainConfig)}


def _list_item_type(tp: Any) -> type | None:
    for arg in (tp, *typing.get_args(tp)):
        if typing.get_origin(arg) is list:
            return typing.get_args(arg)[0]
    return None


LIST_ITEM_TYPES: dict[str, type] = {
    name: item for name, tp in typing.get_type_hints(TrainConfig).items() if (item := _list_item_type(tp))
}


def normalize_key(key: str) -> str:
    return str(key).replace("-", "_")


def from_mapping(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Turn a mapping with flag-style keys into TrainConfig keyword arguments."""
    out = {}
    for key, value in values.items():
        name = normalize_key(key)
        if name not in FIELD_NAMES:
            raise MemlawError(f"{where}: unknown key {key!r}")
        if name in LIST_ITEM_TYPES and value is not None:
            value = parse_list(value, LIST_ITEM_TYPES[name], name)
        out[name] = value
    return out


def parse_list(value: Any, kind: type, name: str) -> list:
    """Accept `18`, `"18,20"`, `[18, 20]` for list fields."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    try:
        return [kind(str(v).strip()) for v in items if str(v).strip()]
    except ValueError:
        raise MemlawError(f"config field '{name.replace('_', '-')}': cannot read {value!r} as a list of {kind.__name__}")


def load_yaml(path: str) -> dict[str, Any]:
    p = Path(path)
    return from_mapping(read_yaml_mapping(p), str(path))


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; every problem becomes one MemlawError line naming the file (and line)."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise MemlawError(f"config file {path} does not exist")
    except (OSError, UnicodeDecodeError) as e:
        raise MemlawError(f"cannot read config file {path}: {e}")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise MemlawError(f"{where}: invalid YAML ({problem})")
    if not isinstance(values, dict):
        raise MemlawError(f"{path}: a config file must be a mapping of flag names to values")
    return values


def build_config(
    yaml_path: str | None, overrides: dict[str, Any], defaults: dict[str, Any] | None = None
) -> TrainConfig:
    """Field defaults < command defaults < YAML < explicit overrides (None means 'not given')."""
    values: dict[str, Any] = dict(defaults or {})
    values.update(load_yaml(yaml_path) if yaml_path else {})
    given = {k: v for k, v in overrides.items() if v is not None}
    if "dtype" in given:  # a reason read from a run's config.yaml was about that run's dtype
        values.pop("dtype_reason", None)
    values.update(given)
    try:
        cfg = TrainConfig(**values)
    except TypeError as e:  # pragma: no cover - keys are checked above
        raise MemlawError(str(e))
    return cfg.validate()


def replace(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    return dataclasses.replace(cfg, **changes)


def pack_key(cfg: TrainConfig) -> tuple | None:
    """What the runs of one pack must share (None: the run cannot pack): one base model, one data file read the
    same way (one prefix cache), the same unit layers and batch width; the prefix cache's settings; and whether
    dropout is on (it decides which forward the cache runs). lora units and the locality means train alone."""
    if cfg.component != "mlp" or any((cfg.preserve_weight, cfg.preserve_kl, cfg.preserve_gate, cfg.preserve_energy)):
        return None
    return (cfg.model, cfg.device, cfg.dtype, cfg.trust_remote_code, str(Path(cfg.data).resolve()), cfg.length,
            cfg.chat_template, tuple(cfg.layer or ()), cfg.batch_size, cfg.eval_batch_size, cfg.prefix_cache,
            cfg.prefix_cache_max_mb, cfg.prefix_cache_device, cfg.dropout > 0)
