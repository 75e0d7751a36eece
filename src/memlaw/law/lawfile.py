"""law.json: the one place that knows its name, writes it, reads and checks it, and names its groups.

`memlaw fit` writes the file, `memlaw plan` and `memlaw report` read it; going through this
module keeps their checks, group keys and labels from drifting apart. It imports
memlaw.law.fit (for GROUP_KEYS and ParametricMemoryLaw) and fit never imports it back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import MemlawError
from ..io import write_json
from .fit import GROUP_KEYS, ParametricMemoryLaw

__all__ = ["GROUP_KEYS", "LAW_FILE", "entry_law", "group_key", "group_label", "pick_group", "read_law", "write_law"]

LAW_FILE = "law.json"
ALL_CELLS = "all cells"  # the label of a group whose key has no values (a table without group columns)


def write_law(folder_or_path: str | os.PathLike, law: Mapping[str, Any]) -> Path:
    """Write `law` atomically (a reader never sees half a file) and return the file's path.

    A folder gets LAW_FILE inside it; a path whose name ends in ".json" is the file itself.
    """
    path = Path(folder_or_path)
    if path.suffix != ".json" or path.is_dir():
        path = path / LAW_FILE
    write_json(path, law)
    return path


def read_law(path: str | os.PathLike) -> dict:
    """law.json as written by `memlaw fit`, checked enough that readers may index 'groups' and 'combined'.

    Every problem is one MemlawError naming the file, so the CLI prints one line, not a traceback.
    """
    not_law = f"{path} is not a law file from `memlaw fit`"
    try:
        law = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MemlawError(f"law file not found: {path} (no law file there; `memlaw fit` writes one)") from None
    except json.JSONDecodeError as e:
        raise MemlawError(f"cannot read the law {path}: not JSON ({e.msg} at line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MemlawError(f"cannot read the law {path}: {e}") from None
    if not isinstance(law, dict):
        raise MemlawError(f"{not_law}: not a JSON object")
    missing = [k for k in ("groups", "combined") if k not in law]
    if missing:
        raise MemlawError(f"{not_law}: no {' or '.join(repr(k) for k in missing)}")
    if not isinstance(law["groups"], list):
        raise MemlawError(f"{not_law}: 'groups' is not a list")
    return law


def group_key(entry: Mapping[str, Any]) -> tuple:
    """A group's (or skipped group's) key as a tuple over GROUP_KEYS, None where the key lacks a column.

    Tuples match the keys memlaw.tables.split_by gives for the results table's rows.
    """
    key = entry.get("key") or {}
    return tuple(key.get(k) for k in GROUP_KEYS)


def group_label(key: tuple, omit: Iterable[str] = (), named: bool = True) -> str:
    """A group's name from its key (a tuple over GROUP_KEYS); missing values and `omit` columns left out.

    named=True gives "model=m,benchmark=b,method=x", the syntax `memlaw plan --group` takes back;
    named=False gives "m · b · x" for figure titles and tables, where the values speak for themselves.
    """
    omit = set(omit)
    shown = [(k, v) for k, v in zip(GROUP_KEYS, key) if v is not None and k not in omit]
    if named:
        return ",".join(f"{k}={v}" for k, v in shown) or ALL_CELLS
    return " · ".join(str(v) for _, v in shown) or ALL_CELLS


def pick_group(law: Mapping[str, Any], spec: str, path: str | os.PathLike) -> tuple[str, dict]:
    """The one group whose key matches every `key=value` of spec (as `--group` gives it), with its label."""
    wanted = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MemlawError(f"--group: expected key=value,..., got {item!r}")
        wanted[key.strip()] = value.strip()
    matches = [g for g in law["groups"] if all(str((g.get("key") or {}).get(k)) == v for k, v in wanted.items())]
    if len(matches) == 1:
        return group_label(group_key(matches[0])), matches[0]
    available = "; ".join(group_label(group_key(g)) for g in law["groups"]) or "none"
    problem = "no group matches" if not matches else f"{len(matches)} groups match"
    raise MemlawError(f"--group {spec}: {problem} in {path}; groups: {available}")


def entry_law(entry: Mapping[str, Any]) -> ParametricMemoryLaw:
    """The fitted law of one law.json entry (a group or "combined"), for predict and rank_for.

    A malformed entry raises MemlawError naming the group, so a bad file points at its bad part.
    """
    try:
        return ParametricMemoryLaw.from_dict(entry)
    except MemlawError as e:
        name = group_label(group_key(entry)) if "key" in entry else "combined"
        raise MemlawError(f"law group {name}: {e}") from None
