"""The run folder and its metrics: one owner for the files a training run leaves behind.

A run folder holds::

    config.yaml        the resolved TrainConfig (concrete layers, device, dtype, data path)
    adapter.*, peft/   the adapter (owned by model/memory_unit.py)
    train_log.csv      one row per optimizer step
    train_state.json   steps, epochs, seconds, why training stopped
    token_probs.safetensors
                       (--log-token-probs N) teacher-forced p_t of every answer token at step 0,
                       every N steps and the last step (TokenProbTrace)
    records.jsonl      per-record recall
    metrics.json       RunMetrics; written last, so its presence marks the run as finished
    error.json         (sweep cells only) why the cell failed
    eval-<data>/       `memlaw eval --data` and extra evaluations: run folders of their own

Every file is written atomically (memlaw.io), so a reader sees a whole file or none.
"""

from __future__ import annotations

import json
import traceback
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import yaml

from .config import TrainConfig, from_mapping, read_yaml_mapping
from .errors import MemlawError
from .io import read_json_object, read_text, save_tensors, write_csv, write_json, write_jsonl, write_yaml

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
RECORDS_FILE = "records.jsonl"
STATE_FILE = "train_state.json"
LOG_FILE = "train_log.csv"
ERROR_FILE = "error.json"
TOKEN_PROBS_FILE = "token_probs.safetensors"
LOCALITY_FILE = "locality.json"

LOG_FIELDS = [
    "epoch", "step", "loss", "lr", "mean_target_prob", "stubborn_tokens",
    "active_tokens", "masked_tokens", "updated", "anchor", "window",
]


def _metric(*, shown: bool = True, column: bool = True, default: Any = MISSING) -> Any:
    """A RunMetrics field: `shown` in the CLI's table, a `column` of the sweep results table."""
    return field(default=default, metadata={"shown": shown, "column": column})


def _is_type(value: Any, tp: Any) -> bool:
    """Whether a JSON value fits a field's annotation (int, float, str, bool, or X | None)."""
    options = [a for a in typing.get_args(tp)] if typing.get_origin(tp) in (typing.Union, types.UnionType) else [tp]
    for option in options:
        if option is type(None) and value is None:
            return True
        if option is bool and isinstance(value, bool):
            return True
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if option is str and isinstance(value, str):
            return True
    return False


def _type_text(tp: Any) -> str:
    options = typing.get_args(tp) or (tp,)
    return " or ".join("null" if o is type(None) else "a number" if o is float else "an integer" if o is int else o.__name__
                       for o in options)


@dataclass
class RunMetrics:
    """The metrics of one evaluated run (metrics.json): the one list of metric keys."""

    n_records: int = _metric()
    target_tokens: int = _metric()
    exact_match: float = _metric()
    token_accuracy: float = _metric()
    free_run_token_accuracy: float = _metric()
    initial_loss: float = _metric()
    final_loss: float = _metric()
    delta_loss: float = _metric()
    # The same over the answer's own tokens (the losses above include the template's end-of-turn suffix).
    initial_answer_loss: float = _metric(shown=False)
    final_answer_loss: float = _metric(shown=False)
    delta_answer_loss: float = _metric(shown=False)
    stubborn_tokens: int = _metric()
    certified_fraction: float = _metric()
    # A certified record that is not an exact match would contradict the certificate: must be 0.
    certificate_violations: int = _metric(shown=False)
    # loss_bits: the answer loss removed, in bits; an upper bound on memory, since it also counts learning
    # the answers' format (it was called bits_stored). bits_per_param = bits_memorized / trainable_params.
    loss_bits: float = _metric()
    trainable_params: int = _metric()
    bits_per_param: float = _metric()
    # Memory in bits (memlaw.data.information): the information of the records recalled exactly, of all
    # records, and where those counts come from (None in metrics written before they existed).
    bits_memorized: float | None = _metric(default=None)
    information_bits: float | None = _metric(shown=False, default=None)
    information_source: str | None = _metric(shown=False, default=None)
    # The loss per trained token of a model that knows only the answers' format, and how far below it
    # the run went: the part of ΔL that stored records rather than the format.
    format_floor_loss: float | None = _metric(shown=False, default=None)
    memorized_delta_loss: float | None = _metric(shown=False, default=None)
    steps: int | None = _metric(default=None)
    train_seconds: float | None = _metric(default=None)
    stopped: str | None = _metric(shown=False, default=None)
    interrupted: bool = _metric(shown=False, column=False, default=False)
    steps_to_certified: int | None = _metric(shown=False, default=None)
    seconds_to_certified: float | None = _metric(shown=False, default=None)
    # `memlaw eval --data`: the run's own (training-data) EM, beside the EM on the other data.
    train_exact_match: float | None = _metric(shown=False, column=False, default=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str) -> RunMetrics:
        """The metrics in `values`, every field present (or defaulted) and of its type; else one MemlawError."""
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in fields(cls)}
        if "bits_stored" in values and "loss_bits" not in values:  # metrics.json written before the rename
            values = {("loss_bits" if k == "bits_stored" else k): v for k, v in values.items()}
        missing = [n for n, f in known.items() if n not in values and f.default is MISSING]
        if missing:
            raise MemlawError(f"{where}: damaged: not a memlaw metrics file (missing {', '.join(missing[:3])}"
                              f"{'…' if len(missing) > 3 else ''})")
        for name, value in values.items():
            if name in known and not _is_type(value, hints[name]):
                raise MemlawError(f"{where}: damaged: field '{name}' is {value!r}, not {_type_text(hints[name])}")
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def shown(cls) -> list[str]:
        """The keys the CLI prints after training or evaluation."""
        return [f.name for f in fields(cls) if f.metadata["shown"]]

    @classmethod
    def columns(cls) -> dict[str, str]:
        """Results-table columns and their pandas dtypes (nullable, since failed cells have none)."""
        hints = typing.get_type_hints(cls)
        dtypes = {int: "Int64", float: "float64", str: "string", bool: "boolean"}
        out = {}
        for f in fields(cls):
            if f.metadata["column"]:
                base = next(t for t in (*typing.get_args(hints[f.name]), hints[f.name]) if t in dtypes)
                out[f.name] = dtypes[base]
        return out

    def table(self) -> list[str]:
        """One aligned `key  value` line per shown metric."""
        keys = self.shown()
        width = max(map(len, keys))
        lines = []
        for key in keys:
            value = getattr(self, key)
            lines.append(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
        return lines


@dataclass(frozen=True, eq=False)
class TokenProbTrace:
    """token_probs.safetensors: the teacher-forced p_t of every answer token at each recorded step.

    The file holds `probs` as float16 (enough to tell p_t from the 0.5 threshold, half the
    size); `ids` and `threshold` are its metadata. Construction checks that the parts agree.
    """

    steps: np.ndarray  # (checks,) int64: optimizer steps, 0 = before the first update
    probs: np.ndarray  # (checks, tokens) float32: every record's answer tokens, concatenated in record order
    offsets: np.ndarray  # (records + 1,) int64: record i is probs[:, offsets[i]:offsets[i + 1]]
    ids: list  # the records' ids, as in records.jsonl
    threshold: float  # the certificate's: a token with p_t <= threshold is stubborn

    def __post_init__(self) -> None:
        checks, tokens = self.probs.shape if self.probs.ndim == 2 else (-1, -1)
        if checks < 0 or self.steps.shape != (checks,):
            raise ValueError(f"probs {self.probs.shape} and steps {self.steps.shape} do not agree")
        if not isinstance(self.ids, list) or self.offsets.shape != (len(self.ids) + 1,):
            raise ValueError(f"offsets {self.offsets.shape} do not fit {len(self.ids)} record ids")
        if self.offsets[0] != 0 or self.offsets[-1] != tokens or np.any(np.diff(self.offsets) < 0):
            raise ValueError(f"offsets do not split {tokens} tokens into records")

    @property
    def n_records(self) -> int:
        return len(self.ids)

    def record(self, i: int) -> np.ndarray:
        """(checks, answer tokens of record i)"""
        return self.probs[:, self.offsets[i] : self.offsets[i + 1]]


@dataclass(frozen=True)
class RunDir:
    """A run folder: where each file lives, whether the run finished, and reading/writing its files."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __str__(self) -> str:
        return str(self.path)

    config_path = property(lambda self: self.path / CONFIG_FILE)
    metrics_path = property(lambda self: self.path / METRICS_FILE)
    records_path = property(lambda self: self.path / RECORDS_FILE)
    state_path = property(lambda self: self.path / STATE_FILE)
    log_path = property(lambda self: self.path / LOG_FILE)
    error_path = property(lambda self: self.path / ERROR_FILE)
    token_probs_path = property(lambda self: self.path / TOKEN_PROBS_FILE)
    locality_path = property(lambda self: self.path / LOCALITY_FILE)

    def eval_dir(self, data: str | Path) -> RunDir:
        """Where the evaluation of this run's adapter on another records file goes."""
        return RunDir(self.path / f"eval-{Path(data).stem}")

    # ------------------------------------------------------------------ state of the folder
    def is_finished(self) -> bool:
        return self.config_path.is_file() and self.metrics_path.is_file()

    def prepare(self, config: dict[str, Any], overwrite: bool) -> None:
        """Make the folder ready for a run with `config`: refuse to clobber a different finished run
        unless `overwrite`, and remove the results of an older run so they cannot pass for this one's."""
        if self.path.exists() and not self.path.is_dir():
            raise MemlawError(f"--out {self.path} exists and is not a directory")
        if self.is_finished() and not overwrite:
            try:
                previous = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                previous = None
            if previous != config:
                raise MemlawError(
                    f"--out {self.path} holds a different finished run; choose another folder or pass --overwrite"
                )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MemlawError(f"cannot create --out {self.path}: {e.strerror or e}")
        for stale in (self.metrics_path, self.records_path, self.state_path, self.token_probs_path, self.locality_path):
            stale.unlink(missing_ok=True)

    # ------------------------------------------------------------------ files
    def write_config(self, config: dict[str, Any]) -> None:
        write_yaml(self.config_path, config)

    def read_config(self) -> TrainConfig:
        if not self.config_path.is_file():
            raise MemlawError(f"{self.path}: no {CONFIG_FILE}; not a memlaw run folder")
        from .train.method import checked  # the methods' own fields too (a lazy import: rundir sits below train/)

        path = str(self.config_path)
        try:
            return checked(TrainConfig(**from_mapping(read_yaml_mapping(self.config_path), path)))
        except MemlawError as e:
            message = str(e)
            raise MemlawError(message if path in message else f"{path}: damaged: {message}") from None
        except (TypeError, ValueError) as e:  # a value of the wrong type that validation compares or converts
            raise MemlawError(f"{path}: damaged: {e}") from None

    def set_data(self, path: str | Path) -> None:
        """Point config.yaml's data at `path`: the run's data file moved (a worker's scratch copy, a saved memory)."""
        write_yaml(self.config_path, {**read_yaml_mapping(self.config_path), "data": str(path)})

    def write_metrics(self, metrics: RunMetrics) -> None:
        write_json(self.metrics_path, metrics.to_dict())

    def read_metrics(self) -> RunMetrics:
        return RunMetrics.from_dict(self._read_json(self.metrics_path), str(self.metrics_path))

    def write_records(self, rows: Iterable[Mapping[str, Any]]) -> None:
        write_jsonl(self.records_path, rows)

    def read_records(self) -> list[dict]:
        """records.jsonl: one object per line with at least query, target and certified; else one MemlawError."""
        path = self.records_path
        rows = []
        for n, line in enumerate(read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise MemlawError(f"{path}:{n}: damaged: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("query", "target")):
                raise MemlawError(f"{path}:{n}: damaged: not a record row (an object with query and target)")
            rows.append(row)
        return rows

    def write_state(self, state: dict[str, Any]) -> None:
        write_json(self.state_path, state)

    def read_state(self) -> dict[str, Any]:
        """train_state.json, or {} for a run that has none."""
        return self._read_json(self.state_path) if self.state_path.is_file() else {}

    def write_log(self, rows: list[dict[str, Any]]) -> None:
        extra = [k for k in (rows[0] if rows else {}) if k not in LOG_FIELDS]  # e.g. preserve_penalty, when on
        write_csv(self.log_path, rows, LOG_FIELDS + extra)

    def write_token_probs(self, steps: Sequence[int], probs: np.ndarray, lengths: Sequence[int],
                          ids: Sequence[Any], threshold: float) -> None:
        """probs: (len(steps), sum(lengths)), each row every record's answer-token p_t in record order."""
        import torch

        trace = TokenProbTrace(np.asarray(steps, dtype=np.int64), np.asarray(probs, dtype=np.float32),
                               np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]), list(ids), threshold)
        save_tensors(self.token_probs_path, {
            "probs": torch.from_numpy(trace.probs).half(),
            "steps": torch.from_numpy(trace.steps),
            "offsets": torch.from_numpy(trace.offsets),
        }, metadata={"ids": json.dumps(trace.ids, ensure_ascii=False), "threshold": str(trace.threshold)})

    def read_token_probs(self) -> TokenProbTrace:
        """The trace of a run trained with --log-token-probs; a missing or malformed file is one MemlawError."""
        path = self.token_probs_path
        if not path.is_file():
            raise MemlawError(f"{path}: no such file (it is written by training with --log-token-probs N)")
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
                return TokenProbTrace(
                    f.get_tensor("steps"), f.get_tensor("probs").astype(np.float32), f.get_tensor("offsets"),
                    json.loads(meta["ids"]), float(meta["threshold"]),
                )
        except KeyError as e:
            raise MemlawError(f"{path}: not a memlaw token-probability file (no {e} metadata)") from None
        except (SafetensorError, ValueError, OSError) as e:  # ValueError: bad JSON or parts that do not agree
            raise MemlawError(f"{path}: not a memlaw token-probability file ({e})") from None

    def write_locality(self, values: dict[str, Any]) -> None:
        write_json(self.locality_path, values)

    def read_locality(self) -> dict[str, Any]:
        return self._read_json(self.locality_path)

    def write_error(self, error: BaseException) -> None:
        write_json(self.error_path, {
            "type": type(error).__name__,
            "message": str(error),
            "traceback": "".join(traceback.format_exception(error)),
        })

    def read_error(self) -> str:
        """'Type: message' of error.json."""
        e = self._read_json(self.error_path)
        return f"{e.get('type')}: {e.get('message')}"

    @staticmethod
    def _read_json(path: Path) -> dict:
        return read_json_object(path)
