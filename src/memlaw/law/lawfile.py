"""law.json: the one place that knows its name, writes it, reads and checks it, and names its groups.

`memlaw fit` writes the file, `memlaw plan` and `memlaw report` read it; going through this
module keeps their checks, group keys and labels from drifting apart. It imports
memlaw.law.fit and memlaw.law.groups, and neither imports it back.

Layout (version 2): "groups" (one per value of the fit's `--by` columns) and "combined" (one
per model and benchmark) are lists of *groups*: {"key", "n", "preferred", "laws": {form:
fitted-law entry}, "holdout": {form: scores} (with --holdout), "errors": {form: why it did
not fit} (if any)}. A version-1 file (one law per group, a single "combined" law) is read
as version 2 with the paper's form only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import MemlawError
from ..io import write_json
from .fit import ParametricMemoryLaw
from .forms import DEFAULT_FORM, FORMS
from .groups import GROUP_KEYS, TARGETS

__all__ = ["ALL_CELLS", "GROUP_KEYS", "LAW_FILE", "ci_text", "default_group", "group_key", "group_label", "group_law", "law_rows",
           "pick_group", "read_law", "write_law"]

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
    """law.json as written by `memlaw fit` (version 1 upgraded to 2), checked enough that readers may index
    'groups' and 'combined' and each group's 'laws'.

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
    if "version" not in law:
        law = _upgrade_v1(law)
    if not isinstance(law["combined"], list):
        raise MemlawError(f"{not_law}: 'combined' is not a list")
    law.setdefault("target", "delta_loss")  # written before --target: ΔL
    if law["target"] not in TARGETS:
        raise MemlawError(f"{not_law}: unknown target {law['target']!r} (known: {', '.join(TARGETS)})")
    for group in law["groups"] + law["combined"]:
        if not isinstance(group, dict) or not isinstance(group.get("laws"), dict) or not group["laws"]:
            raise MemlawError(f"{not_law}: a group without fitted laws")
        unknown = sorted(set(group["laws"]) - set(FORMS))
        if unknown:
            raise MemlawError(f"{not_law}: unknown law form(s) {', '.join(unknown)} (known: {', '.join(FORMS)})")
    return law


def _upgrade_v1(law: dict) -> dict:
    """A version-1 law.json (one paper-form law per group, one combined law over every row) as version 2."""

    def group(entry: dict) -> dict:
        if not isinstance(entry, dict):
            return {}
        fitted = {k: v for k, v in entry.items() if k != "key"}
        return {"key": entry.get("key") or {}, "n": entry.get("n"), "preferred": DEFAULT_FORM, "laws": {DEFAULT_FORM: fitted}}

    return {
        **law, "version": 2, "forms": {DEFAULT_FORM: FORMS[DEFAULT_FORM].formula},
        "groups": [group(g) for g in law["groups"]], "combined": [group(law["combined"])],
        "excluded": [], "holdout": None,
    }


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
    """The group (or combined law) whose key matches every `key=value` of spec (as `--group` gives it), with its label.

    Among several matches, the one whose key names exactly spec's columns wins, so
    "model=m,benchmark=b" picks that combined law even though its method groups match too.
    """
    wanted = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MemlawError(f"--group: expected key=value,..., got {item!r}")
        wanted[key.strip()] = value.strip()
    candidates = [(g, False) for g in law["groups"]] + [(g, True) for g in law["combined"]]
    matches = [(g, c) for g, c in candidates if all(str((g.get("key") or {}).get(k)) == v for k, v in wanted.items())]
    if len(matches) > 1:
        exact = [(g, c) for g, c in matches if {k for k, v in (g.get("key") or {}).items() if v is not None} == set(wanted)]
        matches = exact if len(exact) == 1 else matches
    if len(matches) == 1:
        return _label(*matches[0]), matches[0][0]
    available = "; ".join(_label(g, c) for g, c in candidates) or "none"
    problem = "no group matches" if not matches else f"{len(matches)} groups match"
    raise MemlawError(f"--group {spec}: {problem} in {path}; groups: {available}")


def default_group(law: Mapping[str, Any], path: str | os.PathLike) -> tuple[str, dict]:
    """The law `memlaw plan` uses without --group: the combined law, when the file has exactly one."""
    if len(law["combined"]) == 1:
        return _label(law["combined"][0], True), law["combined"][0]
    if not law["combined"] and len(law["groups"]) == 1:
        return _label(law["groups"][0], False), law["groups"][0]
    available = "; ".join(_label(g, False) for g in law["groups"]) or "none"
    raise MemlawError(f"{path} holds {len(law['combined'])} combined laws; choose one with --group "
                      f"(groups: {available}; combined: {'; '.join(_label(g, True) for g in law['combined'])})")


def _label(group: Mapping[str, Any], combined: bool) -> str:
    label = group_label(group_key(group))
    return f"combined {label}" if combined else label


def group_law(group: Mapping[str, Any], form: str | None = None) -> ParametricMemoryLaw:
    """The fitted law of one group of law.json in `form` (default: the group's preferred form).

    A missing form or a malformed entry raises MemlawError naming the group.
    """
    name = group_label(group_key(group))
    form = form or group.get("preferred") or DEFAULT_FORM
    laws = group.get("laws") or {}
    if form not in laws:
        raise MemlawError(f"law group {name}: no {form!r} law (fitted: {', '.join(laws) or 'none'})")
    try:
        return ParametricMemoryLaw.from_dict(laws[form])
    except MemlawError as e:
        raise MemlawError(f"law group {name} ({form}): {e}") from None


def law_rows(law: Mapping[str, Any], named: bool = True) -> list[dict]:
    """One row per (group, form), combined laws last: the law table that `memlaw fit` prints and the report shows.

    `named`: group labels as group_label gives them (key=value for the CLI, plain values for the report).
    """
    rows = []
    for combined, groups in ((False, law["groups"]), (True, law["combined"])):
        for g in groups:
            label = group_label(group_key(g), named=named)
            for form, e in g["laws"].items():
                held = (g.get("holdout") or {}).get(form, {})
                params = FORMS[form].params
                rows.append({
                    "group": f"combined {label}" if combined else label, "key": group_key(g), "combined": combined,
                    "form": form,
                    "preferred": form == g.get("preferred"), "n": e.get("n"),
                    "params": [(p, e[p], (e.get("ci") or {}).get(p)) for p in params],
                    "r2": e.get("r2"), "mape": e.get("mape"), "aic": e.get("aic"), "bic": e.get("bic"),
                    "heldout_n": held.get("n_heldout"), "heldout_mape": held.get("mape"), "heldout_r2": held.get("r2"),
                    "heldout_error": held.get("error"),
                })
    return rows


def ci_text(value: float, ci: Sequence[float] | None, ci_spec: str = ".4g") -> str:
    """A fitted parameter with its bootstrap interval, "433.8 [51.02, 3.723e+04]" (no interval: the value alone)."""
    return f"{value:.4g}" + (f" [{ci[0]:{ci_spec}}, {ci[1]:{ci_spec}}]" if ci else "")
