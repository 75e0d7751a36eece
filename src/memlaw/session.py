"""Setting up a run: resolve the config, load model + data, attach (or load) the memory unit."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import TrainConfig, replace
from .data.encoding import Encoded, encode_records
from .data.records import Record, load_records
from .errors import MemlawError
from .model.forward import AnswerForward
from .model.loading import LoadedModel, decoder_layers, default_layers, load_model
from .model.memory_unit import ADAPTER_JSON, Adapter, AdapterSpec, attach_adapter, detach_adapter, load_adapter
from .model.prefix_cache import PrefixCache, notice, unsupported_reason
from .rundir import CONFIG_FILE
from .train.method import checked


@dataclass
class Session:
    cfg: TrainConfig  # resolved: concrete layers, device and dtype
    loaded: LoadedModel
    adapter: Adapter

    @property
    def pad_id(self) -> int:
        return int(self.loaded.tokenizer.pad_token_id)

    def close(self) -> None:
        """Detach the memory unit: the loaded model is the bare base model again, ready for another run."""
        self.loaded.model = detach_adapter(self.adapter)

    def load_data(self, path: str | None = None) -> tuple[list[Record], list[Encoded]]:
        records = load_records(path or self.cfg.data, self.loaded.tokenizer, self.cfg.length)
        return records, encode_records(self.loaded.tokenizer, records, self.cfg.chat_template)

    def answer_forward(self, encoded: list[Encoded]) -> AnswerForward:
        """The forward for these records: through a frozen-prefix cache when enabled, supported and within bound."""
        cfg, model, device = self.cfg, self.adapter.model, self.loaded.device
        forward = AnswerForward(model, encoded, self.pad_id, device)
        if not cfg.prefix_cache:
            return forward
        reason = unsupported_reason(model)
        size_mb = PrefixCache.size_bytes(model, encoded) / 2**20
        if reason is None and size_mb > cfg.prefix_cache_max_mb:
            reason = f"it would take {size_mb:.0f} MiB, over --prefix-cache-max-mb {cfg.prefix_cache_max_mb:g}"
        if reason is not None:
            notice(f"prefix cache off ({reason}); running the full forward")
            return forward
        store = device if cfg.prefix_cache_device == "model" else torch.device("cpu")
        forward.cache = PrefixCache.build(model, min(cfg.layer), encoded, self.pad_id, device, cfg.eval_batch_size, store)
        return forward


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_data_readable(path: str) -> None:
    if not Path(path).is_file():
        raise MemlawError(f"data file {path} does not exist")


def resolve(cfg: TrainConfig, loaded: LoadedModel) -> TrainConfig:
    """Fill in what 'auto'/None stood for, so config.yaml says exactly what ran."""
    layers = cfg.layer if cfg.layer is not None else default_layers(loaded.model.config, len(decoder_layers(loaded.model)))
    dtype = str(loaded.dtype).replace("torch.", "")
    # a concrete dtype keeps the reason it came with (a run's config reused: memorize --into)
    reason = loaded.dtype_reason if cfg.dtype == "auto" else cfg.dtype_reason or "given (--dtype)"
    resolved = replace(cfg, layer=list(layers), device=loaded.device.type, dtype=dtype, dtype_reason=reason,
                       data=str(Path(cfg.data).resolve()))
    return checked(resolved)  # again on the concrete layers (the gate's one layer), with the methods' own fields


def adapter_spec(cfg: TrainConfig, model: torch.nn.Module) -> AdapterSpec:
    """The adapter a resolved config asks for, checked against the model (the one place layers are range-checked)."""
    return AdapterSpec.for_model(
        model, cfg.component, cfg.layer, cfg.rank, cfg.dropout,
        target_modules=cfg.target_modules if cfg.component == "lora" else (),
        lora_alpha=cfg.lora_alpha, base_model=cfg.model, a_init=cfg.a_init, gate=cfg.preserve_gate > 0,
    )


def new_session(cfg: TrainConfig, loaded: LoadedModel | None = None, pack: bool = False) -> Session:
    """Attach a fresh, seeded adapter (identity at step 0) to the base model: `loaded` (a model already
    loaded for cfg's model, device and dtype, with no unit attached, or with the units of a pack's runs if
    `pack`) or a freshly loaded one."""
    check_data_readable(cfg.data)
    if loaded is None:
        loaded = load_model(cfg.model, cfg.device, cfg.dtype, cfg.trust_remote_code)
    cfg = resolve(cfg, loaded)
    spec = adapter_spec(cfg, loaded.model)
    seed_everything(cfg.seed)
    return Session(cfg, loaded, attach_adapter(loaded.model, spec, seed=cfg.seed, pack=pack))


def saved_session(run_dir: Path, cfg: TrainConfig, loaded: LoadedModel | None = None) -> Session:
    """The run's adapter on the base model named in its config (`loaded`: that model, already loaded)."""
    loaded = loaded or load_model(cfg.model, cfg.device, cfg.dtype, cfg.trust_remote_code)
    adapter = load_adapter(loaded.model, run_dir)
    # What the unit is lives in two files; they agree unless one was damaged (a config.yaml cut short still parses,
    # with defaults for its lost fields), and training on from the run (memorize --into) rebuilds the unit from config.
    saved = adapter.spec
    said = {"component": cfg.component, "rank": cfg.rank, "gate": cfg.preserve_gate > 0,
            "layers": tuple(cfg.layer) if cfg.layer is not None else saved.layers,
            "target_modules": tuple(cfg.target_modules) if cfg.component == "lora" else ()}
    differs = [name for name, value in said.items() if getattr(saved, name) != value]
    if differs:
        detach_adapter(adapter)
        raise MemlawError(f"{Path(run_dir) / CONFIG_FILE} disagrees with {ADAPTER_JSON} on the unit "
                          f"({', '.join(differs)}): one of the two files is damaged")
    return Session(cfg, loaded, adapter)
