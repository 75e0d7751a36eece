"""The memory unit: a low-rank adapter attached to a frozen causal LM.

Two components share one handle (:class:`Adapter`):

* ``mlp``  — the paper's unit: ``mlp_out' = mlp(x) + dropout(x · A · B)`` in parallel with
  the MLP block of the chosen layers (A Kaiming-uniform, B zeros, no α/r scaling).
* ``lora`` — standard PEFT LoRA on named linear modules of the chosen layers.

Saved as ``adapter.safetensors`` + ``adapter.json``; ``lora`` is also saved in PEFT's own
format under ``peft/`` so that ``PeftModel.from_pretrained`` loads it.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..config import A_INITS, LORA_MODULES
from ..errors import MemlawError
from ..io import save_tensors, write_json
from .loading import decoder_layers

ADAPTER_FILE = "adapter.safetensors"
ADAPTER_JSON = "adapter.json"
PEFT_DIR = "peft"


@dataclass(frozen=True)
class AdapterSpec:
    """What the adapter is and where it sits, complete and resolved for one model; stored as adapter.json.

    Build it with :meth:`for_model`, which validates the layers and module names against the
    model once and fills in the model's dimensions and the trainable parameter count.
    """

    component: str
    layers: tuple[int, ...]
    rank: int
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ()
    lora_alpha: float | None = None
    a_init: str = "reference"  # mlp: the initial scale of A (LowRankUnit)
    gate: bool = False  # mlp: the unit writes only where its key fires (LowRankUnit.key, .threshold)
    base_model: str = ""
    model_type: str = ""
    hidden_size: int = 0
    num_layers: int = 0
    trainable_params: int = 0

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        component: str,
        layers: Sequence[int],
        rank: int,
        dropout: float = 0.0,
        target_modules: Sequence[str] = (),
        lora_alpha: float | None = None,
        base_model: str = "",
        a_init: str = "reference",
        gate: bool = False,
    ) -> AdapterSpec:
        """The spec of a `component` adapter of `rank` at `layers` of `model`; MemlawError if it does not fit."""
        blocks = decoder_layers(model)
        for k in layers:
            if not 0 <= k < len(blocks):
                raise MemlawError(
                    f"config field 'layer': layer {k} is out of range; this model has layers 0..{len(blocks) - 1}"
                )
        d = int(model.config.hidden_size)
        if component == "mlp":
            modules: tuple[str, ...] = ()
            params = 2 * d * rank * len(layers)  # A (d x r) and B (r x d) per layer
        elif component == "lora":
            modules = tuple(target_modules) or LORA_MODULES
            params = sum(rank * (m.in_features + m.out_features) for m in _lora_targets(blocks, layers, modules))
        else:
            raise MemlawError(f"unknown component {component!r}; choose from mlp, lora")
        if a_init not in A_INITS:
            raise MemlawError(f"config field 'a-init': must be one of {', '.join(A_INITS)}, got {a_init!r}")
        if gate and component != "mlp":
            raise MemlawError("a gated unit is the mlp component's; lora has no read to gate")
        return cls(
            component=component, layers=tuple(layers), rank=rank, dropout=dropout, target_modules=modules,
            lora_alpha=lora_alpha, a_init=a_init, base_model=base_model, model_type=str(getattr(model.config, "model_type", "")),
            hidden_size=d, num_layers=len(blocks), trainable_params=params, gate=gate,
        )


def _lora_targets(blocks: nn.ModuleList, layers: Sequence[int], modules: Sequence[str]) -> list[nn.Linear]:
    """The linear modules LoRA adapts; MemlawError naming a layer that lacks one of them."""
    found = []
    for k in layers:
        present = {name.rsplit(".", 1)[-1]: m for name, m in blocks[k].named_modules() if isinstance(m, nn.Linear)}
        missing = [m for m in modules if m not in present]
        if missing:
            raise MemlawError(
                f"config field 'target-modules': layer {k} has no module named {', '.join(missing)}; "
                f"its linear modules are {', '.join(sorted(present))}"
            )
        found += [present[m] for m in modules]
    return found


def gate_mask(x: torch.Tensor, key: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """(…, 1): 1 where the input's score x·key (float32) exceeds the threshold, else 0: the positions a gated
    unit writes to. A zero key and threshold (a gated unit before its gate is fit) write nowhere."""
    return (x.float() @ key > threshold).unsqueeze(-1)


class UnitRandom:
    """One run's random stream for its units: A's initialization, then every dropout mask, in the order the units
    draw them. Seeded as torch.manual_seed(seed) seeds the global generator, it gives a run alone on the CPU the
    very numbers the global generator gave (F.dropout's mask is bernoulli_(1 − p) / (1 − p)); runs trained side
    by side (memlaw.train.trainer.Run) each keep their own. A CUDA tensor's masks come from a CUDA generator
    with the same seed, which draws differently from the fused dropout kernel."""

    def __init__(self, seed: int):
        self.seed = seed
        self.cpu = torch.Generator().manual_seed(seed)
        self._devices: dict[torch.device, torch.Generator] = {}

    def on(self, device: torch.device) -> torch.Generator:
        if device.type == "cpu":
            return self.cpu
        if device not in self._devices:
            self._devices[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._devices[device]


class LowRankUnit(nn.Module):
    """x (…, d) -> dropout(x · A · B) (…, d), with A: d×r (Kaiming-uniform), B: r×d (zeros).

    `a_init`: "reference" applies kaiming_uniform_(a=√5) to the d×r tensor itself, as the paper's
    code does, so PyTorch takes fan_in = r and A ~ U(±1/√r); "linear" gives A the law of an
    nn.Linear(d, r) weight, U(±1/√d) (memlaw before 2026-11-24: √(d/r) times smaller).
    `gate`: the unit writes only at the positions where x·key > threshold (:func:`gate_mask`), two buffers
    that memlaw.train.preserve fits to tell the records' positions from replayed general inputs.
    `random`: the run's stream for A's initialization and the dropout masks (None: the global generator).
    """

    def __init__(self, hidden_size: int, rank: int, dropout: float = 0.0, a_init: str = "reference", gate: bool = False,
                 random: UnitRandom | None = None):
        super().__init__()
        self.A = nn.Parameter(torch.empty(hidden_size, rank))
        self.B = nn.Parameter(torch.zeros(rank, hidden_size))
        self.random = random
        nn.init.kaiming_uniform_(self.A if a_init == "reference" else self.A.T, a=math.sqrt(5),
                                 generator=None if random is None else random.cpu)
        self.dropout = nn.Dropout(dropout)
        self.gate = gate
        if gate:
            self.register_buffer("key", torch.zeros(hidden_size))  # (d,)
            self.register_buffer("threshold", torch.zeros(1))

    def forward(self, x: torch.Tensor, width: int | None = None) -> torch.Tensor:
        """`width`: in a packed batch (:class:`UnitMLP`), the columns this run's own batch has (its rows are
        left-padded wider); the dropout mask is drawn over those alone, so the run draws the masks it draws alone."""
        out = x @ self.A @ self.B  # (…, d)
        p = self.dropout.p
        if self.training and p > 0:
            if self.random is None:
                out = self.dropout(out)
            else:  # F.dropout's arithmetic, with the run's own generator
                out = out * self._keep(out, p, width)
        return out * gate_mask(x, self.key, self.threshold) if self.gate else out

    def _keep(self, out: torch.Tensor, p: float, width: int | None) -> torch.Tensor:
        """The dropout factor (…, T, d): bernoulli(1 − p) / (1 − p), drawn over the last `width` columns only
        (the wider packed batch's extra columns are padding: 0)."""
        generator = self.random.on(out.device)
        if width is None or width == out.shape[-2]:
            return torch.empty_like(out).bernoulli_(1 - p, generator=generator).div_(1 - p)
        own = torch.empty((*out.shape[:-2], width, out.shape[-1]), dtype=out.dtype, device=out.device)
        own.bernoulli_(1 - p, generator=generator).div_(1 - p)  # (…, width, d)
        return torch.cat([own.new_zeros((*out.shape[:-2], out.shape[-2] - width, out.shape[-1])), own], -2)


class UnitMLP(nn.Module):
    """A decoder layer's MLP with low-rank units in parallel on the same input.

    One unit (a run alone) writes every row. Several units on one layer are the runs of a pack
    (memlaw.train.trainer.train_pack): a packed forward sets `spans`, (unit, rows, width) in row order,
    and each unit writes its own rows only; any other forward (a run's check, evaluation, generation)
    is one run's, named by `active` (:meth:`Adapter.selected`).
    """

    def __init__(self, mlp: nn.Module, unit: LowRankUnit):
        super().__init__()
        self.mlp = mlp
        self.units = nn.ModuleList([unit])
        self.enabled = True
        self.active: LowRankUnit | None = None  # the unit that writes every row, when several share the layer
        self.spans: list[tuple[LowRankUnit, int | None, int | None]] | None = None  # a packed forward's (unit, rows, width)

    @property
    def unit(self) -> LowRankUnit:
        """The unit that writes a forward that is not packed."""
        if self.active is not None:
            return self.active
        if len(self.units) > 1:
            raise RuntimeError("several units share this layer and no run is selected (Adapter.selected)")
        return self.units[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mlp(x)
        if not self.enabled:
            return out
        # The memory is kept in float32 whatever the base dtype (as PEFT does for adapters).
        x32 = x.to(self.units[0].A.dtype)
        if self.spans is None:
            return out + self.unit(x32).to(out.dtype)
        parts, first = [], 0
        for unit, rows, width in self.spans:  # x (R, T, d): each run's rows in turn (None: an equal share)
            rows = x.shape[0] // len(self.spans) if rows is None else rows
            parts.append(unit(x32[first : first + rows], width))
            first += rows
        assert first == x.shape[0], "the spans cover the packed batch"
        return out + torch.cat(parts).to(out.dtype)


class Adapter:
    """Handle on a model with an attached memory unit: parameters, state, enable/disable, save.

    mlp: `units` maps each adapted layer's MLP (its module path, e.g. "model.layers.20.mlp") to this
    adapter's :class:`LowRankUnit` there and `hosts` to the :class:`UnitMLP` that holds it (with the units
    of the other runs of a pack, if any), so the handle touches its own units only and names their tensors
    "<path>.memory.<A|B|key|threshold>" wherever the units sit (the names of every adapter.safetensors
    written so far: a file format, kept when the module attribute became `units`)."""

    def __init__(self, model: nn.Module, spec: AdapterSpec, hosts: dict[str, UnitMLP] | None = None,
                 units: dict[str, LowRankUnit] | None = None):
        self.model = model  # what to call: the base model (mlp) or the PeftModel (lora)
        self.spec = spec
        self.hosts = hosts or {}
        self._units = units if units is not None else {path: host.units[0] for path, host in self.hosts.items()}

    @property
    def units(self) -> dict[str, LowRankUnit]:
        return dict(self._units)

    @contextmanager
    def selected(self) -> Iterator[None]:
        """Forwards that are not packed run through this adapter's units (they share their layers with a pack's
        other runs): its checks, evaluation and generation. A no-op for a unit alone on its layers."""
        before = {path: host.active for path, host in self.hosts.items()}
        for path, host in self.hosts.items():
            host.active = self._units[path]
        try:
            yield
        finally:
            for path, host in self.hosts.items():
                host.active = before[path]

    # ------------------------------------------------------------------ state
    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        if self.spec.component == "lora":
            yield from ((name, p) for name, p in self.model.named_parameters() if p.requires_grad)
            return
        for path, unit in self.units.items():
            yield f"{path}.memory.A", unit.A
            yield f"{path}.memory.B", unit.B

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter tensors only, with stable names (layer index included); a gated unit's key and threshold too."""
        if self.spec.component == "lora":
            from peft import get_peft_model_state_dict

            return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}
        return {name: p.detach().clone() for name, p in self._tensors().items()}

    def _tensors(self) -> dict[str, torch.Tensor]:
        """mlp: the live A and B of every unit, and the key and threshold of a gated one."""
        out: dict[str, torch.Tensor] = dict(self.named_parameters())
        for path, unit in self.units.items():
            if unit.gate:
                out[f"{path}.memory.key"], out[f"{path}.memory.threshold"] = unit.key, unit.threshold
        return out

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.spec.component == "lora":
            from peft import set_peft_model_state_dict

            own = get_lora_keys(self.model)
            _check_keys(set(tensors), own)
            set_peft_model_state_dict(self.model, tensors)
            return
        params = self._tensors()
        _check_keys(set(tensors), set(params))
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(tensors[name].to(p.dtype))

    def set_training(self, on: bool) -> None:
        """Train mode for the adapter only (its dropout); the frozen base model stays in eval mode."""
        others = {unit: unit.training for host in self.hosts.values() for unit in host.units}  # a pack's other runs
        self.model.eval()
        for unit, mode in others.items():
            unit.train(mode)
        for unit in self.units.values():
            unit.train(on)
        if on:
            for name, module in self.model.named_modules():
                if name.endswith("lora_dropout"):
                    module.train()

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the base model alone (for the initial loss)."""
        if self.spec.component == "lora":
            with self.model.disable_adapter():
                yield
            return
        hosts = list(self.hosts.values())  # every unit on them: a pack's runs share the base model's output
        for m in hosts:
            m.enabled = False
        try:
            yield
        finally:
            for m in hosts:
                m.enabled = True

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path, tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Write adapter.safetensors + adapter.json (+ peft/ for lora). `tensors` defaults to the live state."""
        folder = Path(folder)
        tensors = self.state_dict() if tensors is None else tensors
        save_tensors(folder / ADAPTER_FILE, tensors, metadata={"format": "memlaw", "component": self.spec.component})
        write_json(folder / ADAPTER_JSON, asdict(self.spec))
        if self.spec.component == "lora":
            save_peft_format(self.model, folder / PEFT_DIR, tensors)


def get_lora_keys(model: nn.Module) -> set[str]:
    from peft import get_peft_model_state_dict

    return set(get_peft_model_state_dict(model))


def _check_keys(given: set[str], expected: set[str]) -> None:
    if given != expected:
        missing, extra = sorted(expected - given), sorted(given - expected)
        raise MemlawError(
            f"adapter does not match this model/spec: missing {missing[:3]}{'…' if len(missing) > 3 else ''}, "
            f"unexpected {extra[:3]}{'…' if len(extra) > 3 else ''}"
        )


def save_peft_format(model: nn.Module, folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """PEFT's own layout (adapter_config.json + adapter_model.safetensors), written atomically per file."""
    from ..io import atomic_write_text

    config = model.peft_config["default"]
    atomic_write_text(folder / "adapter_config.json", json.dumps(config.to_dict(), indent=2, default=list) + "\n")
    save_tensors(folder / "adapter_model.safetensors", tensors, metadata={"format": "pt"})


# ---------------------------------------------------------------------- attach / load
def attach_adapter(model: nn.Module, spec: AdapterSpec, seed: int | None = None, pack: bool = False) -> Adapter:
    """Attach a fresh memory unit described by `spec` (from :meth:`AdapterSpec.for_model`) to a frozen
    model, in place, and return its handle. The unit is the identity at step 0 (B = 0, lora_B = 0).
    `pack`: the unit may join units already on its layers (the runs of a pack, mlp only)."""
    if spec.hidden_size != int(model.config.hidden_size) or spec.num_layers != len(decoder_layers(model)):
        raise MemlawError(
            f"adapter is for hidden size {spec.hidden_size} and {spec.num_layers} layers; "
            f"this model has {model.config.hidden_size} and {len(decoder_layers(model))}"
        )
    if seed is not None:
        torch.manual_seed(seed)
    random = UnitRandom(seed) if seed is not None else None  # one stream for all of this run's units, layer by layer
    device = next(model.parameters()).device
    packed_before = [p for m in model.modules() if isinstance(m, LowRankUnit) for p in m.parameters()]  # a pack's
    model.requires_grad_(False)
    for p in packed_before:
        p.requires_grad_(True)
    if spec.component == "mlp":
        blocks = decoder_layers(model)
        for k in spec.layers:
            if isinstance(blocks[k].mlp, UnitMLP) and not pack:
                raise MemlawError(f"layer {k} already has a memory unit")
        units = {}
        for k in spec.layers:
            unit = LowRankUnit(spec.hidden_size, spec.rank, spec.dropout, spec.a_init, spec.gate, random).to(device)
            if isinstance(blocks[k].mlp, UnitMLP):
                blocks[k].mlp.units.append(unit)
            else:
                blocks[k].mlp = UnitMLP(blocks[k].mlp, unit)
            units[id(blocks[k].mlp)] = unit
        hosts = {name: m for name, m in model.named_modules() if id(m) in units}  # in the model's order
        handle = Adapter(model, spec, hosts, {name: units[id(m)] for name, m in hosts.items()})
    else:
        if pack:
            raise MemlawError("only mlp units pack; a lora run trains alone")
        handle = Adapter(_attach_lora(model, spec), spec)
    assert handle.num_parameters() == spec.trainable_params, "AdapterSpec.for_model counts what is attached"
    return handle


def detach_adapter(adapter: Adapter) -> nn.Module:
    """Remove an attached unit, in place, and return the bare base model as it was before
    :func:`attach_adapter` (its weights were never touched), so one loaded model serves many runs.
    Units of other runs on the same layers (a pack) stay."""
    if adapter.spec.component == "lora":
        return adapter.model.unload()  # PEFT puts the original linear modules back, unmerged
    blocks = decoder_layers(adapter.model)
    own = {id(u) for u in adapter.units.values()}
    for k in adapter.spec.layers:
        host = blocks[k].mlp
        if isinstance(host, UnitMLP):
            rest = [u for u in host.units if id(u) not in own]
            if rest:
                host.units = nn.ModuleList(rest)
                if host.active is not None and id(host.active) in own:
                    host.active = None
            else:
                blocks[k].mlp = host.mlp
    return adapter.model


def _attach_lora(model: nn.Module, spec: AdapterSpec) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.lora_alpha if spec.lora_alpha is not None else spec.rank,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
        layers_to_transform=list(spec.layers),
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=spec.base_model or None,
    )
    return get_peft_model(model, config)


def read_spec(folder: str | Path) -> AdapterSpec:
    """adapter.json, every field present and of its type; a missing or damaged file is one MemlawError naming it."""
    path = Path(folder) / ADAPTER_JSON
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MemlawError(f"{folder}: no {ADAPTER_JSON}; not a memlaw run or adapter folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MemlawError(f"{path}: damaged: not a readable JSON file ({e})") from None
    if not isinstance(raw, dict):
        raise MemlawError(f"{path}: damaged: expected a JSON object, got {type(raw).__name__}")
    known = {f.name for f in fields(AdapterSpec)}
    unknown = sorted(set(raw) - known)
    missing = [f.name for f in fields(AdapterSpec) if f.name not in raw and f.default is MISSING]
    if unknown or missing:
        raise MemlawError(f"{path}: damaged: {'unknown field ' + repr(unknown[0]) if unknown else 'missing field ' + repr(missing[0])}")

    def bad(name: str, want: str) -> MemlawError:
        return MemlawError(f"{path}: damaged: field '{name}' is {raw[name]!r}, not {want}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for name in ("rank", "hidden_size", "num_layers", "trainable_params"):
        if name in raw and not (is_int(raw[name]) and raw[name] >= 0):
            raise bad(name, "a non-negative integer")
    if not isinstance(raw["layers"], list) or not raw["layers"] or not all(is_int(k) and k >= 0 for k in raw["layers"]):
        raise bad("layers", "a list of layer indices")
    if not isinstance(raw.get("target_modules", []), list) or not all(isinstance(m, str) for m in raw.get("target_modules", [])):
        raise bad("target_modules", "a list of module names")
    for name in ("component", "a_init", "base_model", "model_type"):
        if name in raw and not isinstance(raw[name], str):
            raise bad(name, "a string")
    for name in ("dropout", "lora_alpha"):
        if raw.get(name) is not None and not (isinstance(raw[name], (int, float)) and not isinstance(raw[name], bool)):
            raise bad(name, "a number")
    if not isinstance(raw.get("gate", False), bool):
        raise bad("gate", "true or false")
    raw.update(layers=tuple(raw["layers"]), target_modules=tuple(raw.get("target_modules", ())))
    return AdapterSpec(**raw)


def load_adapter(model: nn.Module, folder: str | Path) -> Adapter:
    """Attach the adapter saved in `folder` to a fresh base model and load its weights."""
    from safetensors.torch import load_file

    spec = read_spec(folder)
    path = Path(folder) / ADAPTER_FILE
    if not path.is_file():
        raise MemlawError(f"{folder}: no {ADAPTER_FILE}; the run has no saved adapter")
    if int(model.config.hidden_size) != spec.hidden_size:
        raise MemlawError(
            f"{folder}: adapter was trained for hidden size {spec.hidden_size}, this model has {model.config.hidden_size}"
        )
    try:  # the saved spec must be what this model makes of the same settings
        resolved = AdapterSpec.for_model(
            model, spec.component, spec.layers, spec.rank, spec.dropout, spec.target_modules, spec.lora_alpha,
            spec.base_model, spec.a_init, spec.gate,
        )
    except MemlawError as e:
        raise MemlawError(f"{folder}: {e}") from None
    differs = [f.name for f in fields(AdapterSpec) if getattr(resolved, f.name) != getattr(spec, f.name)]
    if differs:
        raise MemlawError(f"{folder}/{ADAPTER_JSON} does not match this model: {', '.join(differs)} differ")
    try:
        loaded = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ...: a damaged file, never a traceback
        raise MemlawError(f"{path}: damaged: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    handle = attach_adapter(model, spec)
    try:
        expected = handle.state_dict()
        for name, tensor in loaded.items():  # a wrong shape must not load (copy_ would broadcast some silently)
            if name in expected and tuple(tensor.shape) != tuple(expected[name].shape):
                raise MemlawError(f"{path}: damaged: tensor {name} has shape {tuple(tensor.shape)}, "
                                  f"the adapter needs {tuple(expected[name].shape)}")
            if name in expected and not (tensor.is_floating_point() and bool(torch.isfinite(tensor).all())):
                raise MemlawError(f"{path}: damaged: tensor {name} is not finite floating point")
        device = next(model.parameters()).device
        try:
            handle.load_state_dict({k: v.to(device) for k, v in loaded.items()})
        except MemlawError as e:
            raise MemlawError(f"{path}: {e}") from None
    except BaseException:
        detach_adapter(handle)  # the model is left as it came
        raise
    return handle


@contextmanager
def packed_units(adapters: Sequence[Adapter], rows: Sequence[int | None], widths: Sequence[int | None]) -> Iterator[None]:
    """Route one packed forward: its first rows[0] rows through adapters[0]'s units, the next rows[1] through
    adapters[1]'s, and so on (rows None: every run an equal share of each forward's rows, as a packed generation
    needs); run i's own batch is widths[i] columns wide (its dropout masks are drawn over those; None: as wide as
    the packed batch). The adapters are a pack's runs: units on the same layers (train_pack checks)."""
    hosts = adapters[0].hosts
    for path, host in hosts.items():
        host.spans = [(a._units[path], r, w) for a, r, w in zip(adapters, rows, widths)]
    try:
        yield
    finally:
        for host in hosts.values():
            host.spans = None
