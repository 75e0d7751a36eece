"""Sweep grids: a typed YAML description of many training runs, expanded into named cells.

A grid is the product ``ratios × methods × ranks × sizes × seeds`` (ratios: Long-Context
only). A cell's size is its ``length`` in answer tokens (PhoneBook, Long-Context: the grid's
``lengths``) or, for the linear rule, its number of training pairs (the grid's ``records``): a
length means answer tokens wherever memlaw says it, and a linear-rule row's ``length`` is the
answer tokens its pairs came to. Optional ``blocks`` narrow it: each block is a partial grid (some of those
axes, each a subset of the grid's list; an axis it omits means all of the grid's values)
and the grid's cells are the product's cells that at least one block selects, in product
order. So "these ranks only on r100" or "MemFT only on r100" is one block each, a cell two
blocks select appears once, and a grid without blocks is the whole product.
Every cell's TrainConfig is built from, in increasing priority:

    TrainConfig defaults < train < by_method[method] < by_length[length]
                         < by_method_length[method][length] < the cell's own axes

The axes (model, method, rank, seed, layer, and length for Long-Context) cannot be set in
the override sections. Data depends only on (benchmark, ratio, size, data seed and the
Long-Context ``source`` file, if any), so the ranks and methods of a grid share their data files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import re
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..config import FIELD_NAMES, TrainConfig, from_mapping, read_yaml_mapping
from ..data.benchmarks import BENCHMARKS, DataSpec, generate
from ..data.long_context import RATIOS
from ..errors import MemlawError
from ..io import write_jsonl

AXIS_KEYS = {
    "data": "the sweep", "model": "model", "method": "methods", "rank": "ranks", "seed": "seeds", "layer": "layer",
    "length": "lengths",
}
BLOCK_AXES = ("ratios", "methods", "ranks", "lengths", "records", "seeds")  # a block's keys, in product order
DATA_PLACEHOLDER = "(generated per cell)"
DEFAULT_HELDOUT = 100
FLOAT_FIELDS = {  # YAML reads 1e-2 as a string; these fields accept it as a number
    name for name, tp in typing.get_type_hints(TrainConfig).items()
    if tp is float or (typing.get_origin(tp) is not list and float in typing.get_args(tp))
}


def size_tag(length: int | None, records: int | None) -> str:
    """L<answer tokens>, or N<pairs> for the linear rule: the size in a cell's and its data's names."""
    return f"N{records}" if records is not None else f"L{length}"


@dataclass(frozen=True)
class Cell:
    """One training run of a sweep: its axes and its fully resolved TrainConfig overrides."""

    name: str
    benchmark: str
    ratio: str | None
    method: str
    rank: int
    length: int | None  # answer tokens (None for the linear rule, sized in records)
    seed: int
    data_seed: int
    overrides: dict[str, Any]  # TrainConfig field -> value (everything but `data`)
    source: str | None = None  # long-context: the grid's source text file (absolute path)
    records: int | None = None  # linear-rule: training pairs

    @property
    def data_name(self) -> str:
        """Stem of the cell's data file; shared by every cell with the same data.

        A custom source adds its file stem and a hash of its path, so different sources never
        share a data file while grids without one keep their names.
        """
        ratio = f"-{self.ratio}" if self.ratio else ""
        source = f"-{source_tag(self.source)}" if self.source else ""
        return f"{self.benchmark}{ratio}-{self.size_tag}-d{self.data_seed}{source}"

    @property
    def size_tag(self) -> str:
        return size_tag(self.length, self.records)

    def train_config(self, data: str | Path) -> TrainConfig:
        from ..train.method import checked  # torch: not on `memlaw --help`'s path

        return checked(TrainConfig(data=str(data), **self.overrides))


@dataclass(frozen=True)
class Grid:
    """A sweep: benchmark, axes, and training settings (see the module docstring for precedence)."""

    name: str
    model: str
    benchmark: str
    methods: list[str]
    ranks: list[int]
    lengths: list[int]  # answer tokens (empty for the linear rule)
    seeds: list[int] = field(default_factory=lambda: [42])
    ratios: list[str] | None = None
    layer: list[int] | None = None
    data_seed: int | None = None
    heldout: int | None = None  # linear-rule: held-out pairs for generalization EM
    description: str = ""
    train: dict[str, Any] = field(default_factory=dict)
    by_method: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_length: dict[int, dict[str, Any]] = field(default_factory=dict)
    by_method_length: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    blocks: list[dict[str, list]] | None = None  # partial grids whose cells are kept (None: the whole product)
    source: str | None = None  # long-context: source text file (None: the built-in text)
    records: list[int] | None = None  # linear-rule: training pairs per cell, its size axis instead of lengths

    @property
    def sizes(self) -> list[int]:
        """The size axis: records for the linear rule, else lengths."""
        return self.records if self.records is not None else self.lengths

    @property
    def device(self) -> str:
        return self.train.get("device", "auto")

    def to_dict(self) -> dict[str, Any]:
        """The grid as written to DIR/grid.yaml; unset blocks/source are left out, so a sweep folder
        made before they existed still holds the same grid."""
        values = dataclasses.asdict(self)
        for name in ("blocks", "source", "records"):
            if values[name] is None:
                del values[name]
        if self.records is not None:
            del values["lengths"]
        return values

    def selects(self, ratio: str | None, method: str, rank: int, size: int, seed: int) -> bool:
        """Whether this point of the product is a cell: always without blocks, else if some block has it."""
        if self.blocks is None:
            return True
        size_axis = "records" if self.records is not None else "lengths"
        point = {"ratios": ratio, "methods": method, "ranks": rank, size_axis: size, "seeds": seed}
        return any(all(point[axis] in values for axis, values in block.items()) for block in self.blocks)

    def cells(self) -> list[Cell]:
        """Every cell, in grid order (ratio, method, rank, length, seed), each once."""
        out = []
        for ratio, method, rank, size, seed in itertools.product(
            self.ratios or [None], self.methods, self.ranks, self.sizes, self.seeds
        ):
            if not self.selects(ratio, method, rank, size, seed):
                continue
            length, records = (None, size) if self.records is not None else (size, None)
            overrides = {
                **self.train,
                **self.by_method.get(method, {}),
                **self.by_length.get(length, {}),
                **self.by_method_length.get(method, {}).get(length, {}),
                "model": self.model, "method": method, "rank": rank, "seed": seed, "layer": self.layer,
            }
            if self.benchmark == "long-context":
                overrides["length"] = length
            prefix = self.benchmark + (f"-{ratio}" if ratio else "")
            out.append(Cell(
                name=f"{prefix}-{method}-r{rank}-{size_tag(length, records)}-s{seed}",
                benchmark=self.benchmark, ratio=ratio, method=method, rank=rank, length=length, seed=seed,
                data_seed=seed if self.data_seed is None else self.data_seed, overrides=overrides, source=self.source,
                records=records,
            ))
        return out


# ---------------------------------------------------------------------- loading and validation
def load_grid(path: str | Path, model: str | None = None) -> Grid:
    """Read and validate a grid YAML file; `model` (``--model``) replaces the file's model."""
    if not Path(path).is_file():
        raise MemlawError(f"grid file {path} does not exist")
    values = read_yaml_mapping(Path(path))
    return parse_grid(values, Path(path).name, model)


def parse_grid(values: dict[str, Any], where: str, model: str | None = None) -> Grid:
    """Validate a grid mapping; every problem is one MemlawError naming `where` and the field."""

    def bad(name: str, why: str) -> MemlawError:
        return MemlawError(f"{where}: field '{name}': {why}")

    known = {f.name for f in dataclasses.fields(Grid)}
    unknown = sorted(set(values) - known, key=str)
    if unknown:
        raise MemlawError(f"{where}: unknown field {unknown[0]!r}; fields are {', '.join(sorted(known))}")
    v = dict(values)
    if model is not None:
        v["model"] = model
    for name in ("name", "model", "benchmark", "methods", "ranks"):
        if v.get(name) is None:
            raise bad(name, "required")
    size = "records" if v["benchmark"] == "linear-rule" else "lengths"
    other = "lengths" if size == "records" else "records"
    if v.get(other) is not None:
        raise bad(other, "a linear-rule grid is sized in records (training pairs), not lengths (answer tokens): write "
                  "records: [...]" if other == "lengths" else "only for benchmark linear-rule (sized in training pairs); "
                  "the other benchmarks are sized in lengths (answer tokens)")
    if v.get(size) is None:
        raise bad(size, "required")

    name = v["name"]
    if not isinstance(name, str) or not name.strip():
        raise bad("name", "must be a non-empty string")
    if not isinstance(v["model"], str) or not v["model"].strip():
        raise bad("model", "must be a model path, a hub id or 'default'")
    benchmark = v["benchmark"]
    if benchmark not in BENCHMARKS:
        raise bad("benchmark", f"must be one of {', '.join(BENCHMARKS)}, got {benchmark!r}")
    from ..train.method import METHODS  # torch: not on `memlaw --help`'s path

    methods = _unique_list(v["methods"], lambda x: x in METHODS, f"a non-empty list of methods from {', '.join(METHODS)}", bad, "methods")
    ranks = _int_list(v, "ranks", 1, bad)
    lengths = _int_list(v, "lengths", 1, bad) if size == "lengths" else []
    records = _int_list(v, "records", 1, bad) if size == "records" else None
    seeds = _int_list(v, "seeds", 0, bad) if "seeds" in v else [42]

    ratios = v.get("ratios")
    if benchmark == "long-context":
        if ratios is None:
            raise bad("ratios", f"required for benchmark long-context (a list from {', '.join(RATIOS)})")
        ratios = _unique_list(ratios, lambda x: x in RATIOS, f"a non-empty list of ratios from {', '.join(RATIOS)}", bad, "ratios")
    elif ratios is not None:
        raise bad("ratios", "only for benchmark long-context")

    heldout = v.get("heldout")
    if benchmark == "linear-rule":
        heldout = DEFAULT_HELDOUT if heldout is None else heldout
        if not _is_int(heldout) or heldout <= 0:
            raise bad("heldout", f"must be a positive integer, got {heldout!r}")
    elif heldout is not None:
        raise bad("heldout", "only for benchmark linear-rule")

    layer = _layers(v.get("layer"), bad)

    data_seed = v.get("data_seed")
    if data_seed is not None and (not _is_int(data_seed) or data_seed < 0):
        raise bad("data_seed", f"must be null (each cell's seed) or a non-negative integer, got {data_seed!r}")
    description = v.get("description") or ""
    if not isinstance(description, str):
        raise bad("description", "must be a string")

    train = _overrides(v.get("train"), "train", bad)
    by_method = _keyed(v.get("by_method"), "by_method", methods, "method", bad)
    by_length = _keyed(v.get("by_length"), "by_length", lengths, "length", bad)
    by_method_length: dict[str, dict[int, dict[str, Any]]] = {}
    for method, per_length in _mapping(v.get("by_method_length"), "by_method_length", bad).items():
        if method not in methods:
            raise bad("by_method_length", f"method {method!r} is not in methods")
        by_method_length[method] = _keyed(per_length, f"by_method_length.{method}", lengths, "length", bad)
    axes = {"ratios": ratios, "methods": methods, "ranks": ranks, "lengths": lengths or None, "records": records,
            "seeds": seeds}
    blocks = _blocks(v.get("blocks"), axes, bad)
    source = _source(v.get("source"), benchmark, bad)

    grid = Grid(
        name=name.strip(), model=_normalize_model(v["model"].strip()), benchmark=benchmark, methods=methods,
        ranks=ranks, lengths=lengths, seeds=seeds, ratios=ratios, layer=layer, data_seed=data_seed,
        heldout=heldout, description=description, train=train, by_method=by_method, by_length=by_length,
        by_method_length=by_method_length, blocks=blocks, source=source, records=records,
    )
    cells = grid.cells()
    if blocks is not None:
        _check_blocks_cover(cells, axes, by_method_length, bad)
    for cell in cells:  # the merged settings must make a valid TrainConfig too
        try:
            cell.train_config(DATA_PLACEHOLDER)
        except MemlawError as e:
            raise MemlawError(f"{where}: cell {cell.name}: {e}")
    return grid


def _blocks(value: Any, axes: dict[str, list | None], bad) -> list[dict[str, list]] | None:
    """null, or a non-empty list of partial grids: mappings from some of BLOCK_AXES to a non-empty
    subset of the grid's list for that axis (kept in the grid's order)."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise bad("blocks", f"must be null or a non-empty list of partial grids (mappings of {', '.join(BLOCK_AXES)})")
    blocks = []
    for i, block in enumerate(value):
        where = f"blocks[{i}]"
        if not isinstance(block, dict) or not block:
            raise bad(where, f"must be a mapping that sets some of {', '.join(BLOCK_AXES)}, got {block!r}")
        unknown = sorted(set(block) - set(BLOCK_AXES), key=str)
        if unknown:
            raise bad(where, f"unknown key {unknown[0]!r}; a block sets some of {', '.join(BLOCK_AXES)}")
        out = {}
        for axis in BLOCK_AXES:
            if axis not in block:
                continue
            if axes[axis] is None:
                only = {"ratios": "benchmark long-context", "records": "benchmark linear-rule"}.get(axis, "the other benchmarks")
                raise bad(f"{where}.{axis}", f"only for {only}")
            kind = (lambda x: isinstance(x, str)) if axis in ("ratios", "methods") else _is_int
            values = _unique_list(block[axis], kind, f"a non-empty list from the grid's {axis}", bad, f"{where}.{axis}")
            missing = [x for x in values if x not in axes[axis]]
            if missing:
                raise bad(f"{where}.{axis}", f"{missing[0]!r} is not in the grid's {axis} {axes[axis]!r}")
            out[axis] = [x for x in axes[axis] if x in values]
        blocks.append(out)
    return blocks


def _check_blocks_cover(cells: list[Cell], axes: dict[str, list | None], by_method_length: dict, bad) -> None:
    """With blocks, every listed axis value and every by_method_length entry must reach a cell:
    a value no block selects would be a silent no-op (usually a typo in a block)."""
    used = {
        "ratios": {c.ratio for c in cells}, "methods": {c.method for c in cells}, "ranks": {c.rank for c in cells},
        "lengths": {c.length for c in cells}, "records": {c.records for c in cells}, "seeds": {c.seed for c in cells},
    }
    for axis, values in axes.items():
        for x in values or []:
            if x not in used[axis]:
                raise bad("blocks", f"{axis[:-1]} {x!r} is listed in {axis} but no block selects it")
    selected = {(c.method, c.length) for c in cells}
    for method, per_length in by_method_length.items():
        for length in per_length:
            if (method, length) not in selected:
                raise bad(f"by_method_length.{method}.{length}", f"no block selects method {method} at length {length}")


def _source(value: Any, benchmark: str, bad) -> str | None:
    """null (the built-in text) or an existing text / reference-format JSONL file, made absolute."""
    if value is None:
        return None
    if benchmark != "long-context":
        raise bad("source", "only for benchmark long-context")
    if not isinstance(value, str) or not value.strip():
        raise bad("source", f"must be the path of a text or reference-format JSONL file, got {value!r}")
    path = Path(os.path.expanduser(value.strip()))
    if not path.is_file():
        raise bad("source", f"file {value.strip()!r} does not exist")
    return str(path.resolve())


def source_tag(source: str) -> str:
    """A file-name-safe tag for a source path: its stem and 8 hex digits of the path's SHA-1."""
    stem = re.sub(r"[^A-Za-z0-9_.]+", "_", Path(source).stem)[:40] or "source"
    return f"{stem}-{hashlib.sha1(source.encode('utf-8')).hexdigest()[:8]}"


def _layers(value: Any, bad) -> list[int] | None:
    """null (the model's default), 18, "18,20" or [18, 20]."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
    try:
        layers = [int(str(x).strip()) for x in items]
    except ValueError:
        layers = []
    if not layers or min(layers) < 0 or len(set(layers)) != len(layers):
        raise bad("layer", f"must be null, a layer index or a list of distinct indices, got {value!r}")
    return layers


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _unique_list(value: Any, ok, what: str, bad, name: str) -> list:
    if not isinstance(value, list) or not value or not all(ok(x) for x in value):
        raise bad(name, f"must be {what}")
    if len(set(value)) != len(value):
        raise bad(name, f"repeats a value: {value!r}")
    return list(value)


def _int_list(v: dict, name: str, minimum: int, bad) -> list[int]:
    kind = "positive" if minimum == 1 else "non-negative"
    return _unique_list(v[name], lambda x: _is_int(x) and x >= minimum, f"a non-empty list of {kind} integers", bad, name)


def _mapping(value: Any, name: str, bad) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad(name, "must be a mapping")
    return value


def _overrides(value: Any, name: str, bad) -> dict[str, Any]:
    """TrainConfig overrides: known field names, no grid axes, values valid on their own."""
    values = {str(k).replace("-", "_"): x for k, x in _mapping(value, name, bad).items()}
    for key in values:
        if key in AXIS_KEYS:
            raise bad(name, f"'{key}' is set by the grid ({AXIS_KEYS[key]}), not by overrides")
        if key not in FIELD_NAMES:
            raise bad(name, f"unknown TrainConfig field {key!r}")
    values = {k: float(x) if k in FLOAT_FIELDS and isinstance(x, str) and _is_float(x) else x for k, x in values.items()}
    try:
        values = from_mapping(values, f"{name}")
        TrainConfig(data=DATA_PLACEHOLDER, **values).validate()
    except MemlawError as e:
        raise bad(name, str(e))
    return values


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _keyed(value: Any, name: str, allowed: list, what: str, bad) -> dict:
    out = {}
    for key, overrides in _mapping(value, name, bad).items():
        if key not in allowed:
            raise bad(name, f"{what} {key!r} is not in the grid's {what}s")
        out[key] = _overrides(overrides, f"{name}.{key}", bad)
    return out


def _normalize_model(model: str) -> str:
    """Local model folders become absolute paths, so every worker finds them from any directory."""
    path = Path(os.path.expanduser(model))
    return str(path.resolve()) if model != "default" and path.exists() else model


# ---------------------------------------------------------------------- presets
def preset_dir():
    return resources.files("memlaw") / "sweep" / "presets"


def list_presets() -> dict[str, str]:
    """Preset name -> one-line description."""
    out = {}
    for entry in sorted(preset_dir().iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            values = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
            out[entry.name[: -len(".yaml")]] = str(values.get("description", "")).strip()
    return out


def load_preset(name: str, model: str | None = None) -> Grid:
    """A shipped grid; the 8B presets name no model and need `model`."""
    entry = preset_dir() / f"{name}.yaml"
    if not entry.is_file():
        raise MemlawError(f"unknown preset {name!r}; choose from {', '.join(list_presets())}")
    values = yaml.safe_load(entry.read_text(encoding="utf-8"))
    if values.get("model") is None and model is None:
        raise MemlawError(f"preset {name} needs --model PATH (the model is not shipped)")
    return parse_grid(values, f"preset {name}", model)


# ---------------------------------------------------------------------- data
def data_paths(cell: Cell, data_dir: Path) -> tuple[Path, Path | None]:
    """The cell's training data file and (linear-rule) its held-out file."""
    train = data_dir / f"{cell.data_name}.jsonl"
    heldout = data_dir / f"{cell.data_name}-heldout.jsonl" if cell.benchmark == "linear-rule" else None
    return train, heldout


def ensure_data(grid: Grid, cell: Cell, data_dir: Path) -> tuple[Path, Path | None]:
    """Generate the cell's data once (deterministic, atomic); return its paths."""
    train, heldout = data_paths(cell, data_dir)
    if train.is_file() and (heldout is None or heldout.is_file()):
        return train, heldout
    spec = DataSpec(cell.benchmark, length=cell.length, records=cell.records, seed=cell.data_seed, ratio=cell.ratio,
                    heldout=grid.heldout, source=grid.source)
    train_rows, heldout_rows = generate(spec, grid.model, bool(grid.train.get("trust_remote_code", False)))
    if heldout is not None:
        write_jsonl(heldout, heldout_rows)
    write_jsonl(train, train_rows)
    return train, heldout
