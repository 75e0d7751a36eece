"""`memlaw report`: one self-contained HTML page for a sweep, figures embedded as PNG data URIs."""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path

import pandas as pd

from ..analysis.phase import PhaseAnalysis, load_or_analyze, load_results, ok_cells
from ..errors import MemlawError
from ..io import atomic_write_text
from ..law.lawfile import GROUP_KEYS, LAW_FILE, group_key, group_label, group_law, law_rows, read_law
from ..tables import finite, format_p, split_by
from .figures import (  # by name: `from . import figures` would import this package, whose __init__ imports us
    Panel,
    any_law,
    delta_loss_curves,
    failure_histograms,
    law_collapse,
    metric_heatmaps,
    predicted_vs_true,
    probability_grids,
    stubborn_vs_failure,
)

FAILED_COLUMNS = ("cell", "method", "ratio", "rank", "length", "seed", "error")
NO_LAW = "no fitted law (run memlaw fit)"
MAX_LISTED = 10  # skipped cells named on the page

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto;
       max-width: 1400px; padding: 1.5rem 2rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .3rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
p.how { color: #444; max-width: 62rem; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: .85rem; margin: .6rem 0; }
th, td { border: 1px solid #ccc; padding: .25rem .55rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.note { background: #fff7e0; border-left: 4px solid #e0a800; padding: .4rem .8rem; }
"""


def build_report(sweep_dir: str | Path, law_path: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Write the sweep's report (default DIR/report.html, atomically) and return its path.

    The law defaults to DIR/law/law.json; without one the page says so and draws data only.
    The analysis is read from DIR/analysis when current, else computed in memory.
    """
    sweep_dir = Path(sweep_dir)
    results = load_results(sweep_dir)
    ok = ok_cells(results, sweep_dir)
    law_file = Path(law_path) if law_path is not None else sweep_dir / "law" / LAW_FILE
    law = read_law(law_file) if law_path is not None or law_file.is_file() else None  # only the default is optional
    try:
        analysis: PhaseAnalysis | str = load_or_analyze(sweep_dir)
    except MemlawError as e:
        analysis = str(e)
    page = render(sweep_dir, results, ok, law, law_file if law else None, analysis)
    out = Path(out) if out is not None else sweep_dir / "report.html"
    atomic_write_text(out, page)
    return out


# ---------------------------------------------------------------------- groups
def title(key: tuple, ok: pd.DataFrame) -> str:
    """A panel's group label: method and ratio always; model and benchmark only when the sweep has several."""
    return group_label(key, omit={k for k in ("model", "benchmark") if ok[k].nunique(dropna=False) <= 1}, named=False)


def make_panels(ok: pd.DataFrame, law: dict | None) -> list[Panel]:
    laws = {group_key(g): group_law(g) for g in (law or {}).get("groups", [])}  # each group's preferred form
    return [Panel(title(key, ok), cells, laws.get(key)) for key, cells in split_by(ok, GROUP_KEYS)]


# ---------------------------------------------------------------------- HTML pieces
def img(png: bytes, alt: str) -> str:
    """A PNG embedded as a base64 data URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{escape(alt)}"></figure>'


def section(title: str, how: str, *body: str) -> str:
    return f"<section><h2>{escape(title)}</h2><p class=\"how\">{escape(how)}</p>{''.join(body)}</section>"


def table(header: list[str] | None, rows: list[list[str]], numeric_from: int = 1) -> str:
    """An HTML table of strings; columns from `numeric_from` on are right-aligned; no header row if None."""
    head = f"<thead><tr>{''.join(f'<th>{escape(h)}</th>' for h in header)}</tr></thead>" if header else ""
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if i >= numeric_from else ''}>{escape(c)}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table>{head}<tbody>{body}</tbody></table>"


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def num(x, spec: str = ".4g", suffix: str = "") -> str:
    x = finite(x)
    return "—" if x is None else f"{x:{spec}}{suffix}"


def with_ci(value: float, ci: list | None) -> str:
    return f"{num(value)} [{num(ci[0])}, {num(ci[1])}]" if ci else num(value)


def parameter_table(law: dict) -> str:
    """Every group named in full (model and benchmark too): the table may list groups this sweep lacks.

    One row per group and form, the preferred form starred; held-out columns when the fit had a holdout.
    """
    holdout = law.get("holdout")
    rows = []
    for r in law_rows(law, named=False):
        params = [f"{name} = {with_ci(value, ci)}" for name, value, ci in r["params"]]
        row = [r["group"], r["form"] + (" *" if r["preferred"] else ""), str(r["n"]), *params,
               num(r["r2"], ".4f"), num(r["mape"], ".2f", "%"), num(r["aic"], ".1f"), num(r["bic"], ".1f")]
        if holdout:
            row += [r["heldout_error"] or str(r["heldout_n"]), num(r["heldout_mape"], ".2f", "%"), num(r["heldout_r2"], ".4f")]
        rows.append(row)
    head = ["group", "form", "n", "C", "α", "β", "b or L0", "R²", "MAPE", "AIC", "BIC"]
    if holdout:
        head += [f"held out ({holdout}): n", "held-out MAPE", "held-out R²"]
    parts = [table(head, rows, numeric_from=2)]
    parts.append(note("* the preferred form (used for the curves and by memlaw plan): "
                      + ("the lower held-out MAPE." if holdout else "the paper's, since the fit had no --holdout.")))
    excluded = law.get("excluded") or []
    if excluded:
        parts.append(f"<p>{len(excluded)} saturated cell(s) left out of the fit:</p>")
        parts.append(table(["cell", "rank", "length", "reason"],
                           [[str(e.get("cell") or group_label(group_key(e), named=False)), str(e.get("rank")),
                             str(e.get("length")), e.get("reason", "")] for e in excluded[:4 * MAX_LISTED]], numeric_from=1))
        if len(excluded) > 4 * MAX_LISTED:
            parts.append(note(f"… and {len(excluded) - 4 * MAX_LISTED} more (law.json lists them all)"))
    if law.get("skipped"):
        parts.append(note("not fitted: " + "; ".join(skipped_text(s) for s in law["skipped"])))
    return "".join(parts)


def skipped_text(entry) -> str:
    """A group the fitter skipped: "label: reason" ({"key", "reason"} entries), else its JSON."""
    if isinstance(entry, dict) and "key" in entry:
        return f"{group_label(group_key(entry), named=False)}: {entry.get('reason', '')}"
    return json.dumps(entry, ensure_ascii=False)


def header(sweep_dir: Path, results: pd.DataFrame, ok: pd.DataFrame, law_file: Path | None) -> str:
    def values(col: str) -> str:
        return ", ".join(sorted({str(v) for v in results[col] if v is not None and v == v}, key=str)) or "—"

    def ints(col: str) -> str:
        return ", ".join(str(v) for v in sorted(ok[col].astype(int).unique()))

    rows = [
        ["model", values("model")], ["benchmark", values("benchmark")], ["method", values("method")],
        ["ratio", values("ratio")], ["ranks", ints("rank")], ["lengths", ints("length")],
        ["cells", f"{len(ok)} ok, {len(results) - len(ok)} failed"],
        ["law", str(law_file) if law_file else NO_LAW],
    ]
    return f"<h1>memlaw report — {escape(sweep_dir.resolve().name)}</h1>" + table(None, rows, numeric_from=2)


def failed_table(results: pd.DataFrame) -> str:
    failed = results[results["status"] != "ok"]
    if failed.empty:
        return ""
    rows = [["" if pd.isna(r.get(c)) else str(r.get(c))[:200] for c in FAILED_COLUMNS] for r in failed.to_dict("records")]
    return section("Failed cells", "These cells did not finish; they are excluded from every figure.",
                   table(list(FAILED_COLUMNS), rows, numeric_from=len(FAILED_COLUMNS)))


# ---------------------------------------------------------------------- the page
def render(sweep_dir: Path, results: pd.DataFrame, ok: pd.DataFrame, law: dict | None, law_file: Path | None,
           analysis: PhaseAnalysis | str) -> str:
    """The whole HTML page."""
    panels = make_panels(ok, law)
    fitted = any_law(panels)
    parts = [header(sweep_dir, results, ok, law_file)]
    law_note = "" if fitted else note(NO_LAW if law is None else "the law has no group matching this sweep's cells; data only")

    parts.append(section(
        "Fitted parameters", "The Parametric Memory Law in two forms, the paper's ΔL = C · r^α · ℓ^(−β) + b and the "
        "bounded ΔL = L0 · h/(1 + h) with h = C · r^α · ℓ^(−β), one fit per group and a combined fit per model and "
        "benchmark, with bootstrap 95% intervals in brackets. R², MAPE, AIC and BIC are on the cells fitted (lower "
        "AIC/BIC: the better form for these cells); the held-out columns, when the fit had --holdout, are the error "
        "of a fit without those cells on them: how well the form extrapolates.",
        parameter_table(law) if law else note(NO_LAW)))
    parts.append(section(
        "ΔL against rank", "Loss reduction per answer token (mean over seeds: line; single seeds: dots) on log-log "
        "axes, one line per length; the dashed curves are the fitted law. Higher rank stores more, so lines rise.",
        law_note, img(delta_loss_curves(panels, "rank"), "delta loss against rank")))
    parts.append(section(
        "ΔL against length", "The same cells, one line per rank, against the total answer length. A fixed capacity "
        "spread over more tokens lowers the per-token reduction, so lines fall with slope about −β.",
        img(delta_loss_curves(panels, "length"), "delta loss against length")))
    parts.append(section(
        "The law in log space", "Subtracting b and dividing by r^α should collapse every rank onto one straight line "
        "C · ℓ^(−β) on log-log axes (the plane log(ΔL − b) = log C + α log r − β log ℓ seen edge-on). Spread around "
        "the dashed line is what the law misses. Without a fit this shows plain ΔL against ℓ.",
        img(law_collapse(panels), "log-space collapse")))
    if fitted:
        parts.append(section(
            "Predicted vs measured ΔL", "One point per cell: the fitted law's prediction against the measurement; "
            "points on the identity line are predicted exactly.",
            img(predicted_vs_true(panels), "predicted against measured delta loss")))
    parts.append(section(
        "Landscapes over rank × length", "Mean over seeds per (rank, length). Final loss is the teacher-forced "
        "answer loss after training; token accuracy the teacher-forced argmax accuracy; exact match the fraction "
        "of records reproduced verbatim by greedy free-run decoding (the memory landscape, one panel per method).",
        img(metric_heatmaps(panels, "final_loss", "final loss (nats / token)", vmin=0.0, cmap="magma_r"),
            "final loss heatmaps"),
        img(metric_heatmaps(panels, "token_accuracy", "token accuracy", 0.0, 1.0), "token accuracy heatmaps"),
        img(metric_heatmaps(panels, "exact_match", "exact match (EM)", 0.0, 1.0), "exact match heatmaps")))
    parts.append(phase_sections(analysis, ok))
    parts.append(failed_table(results))
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>memlaw report — {escape(sweep_dir.resolve().name)}</title><style>{CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")


def phase_sections(analysis: PhaseAnalysis | str, ok: pd.DataFrame) -> str:
    """Probability grids and the phase transition, or why they are missing."""
    if isinstance(analysis, str):
        return section("Stubborn tokens and the phase transition", "Needs each cell's records.jsonl.",
                       note(f"no per-record data: {analysis}"))
    s = analysis.summary
    grids = [(title(key, ok), g) for key, g in split_by(analysis.grid, GROUP_KEYS)]
    grid_part = section(
        "Stubborn-token probability grids", "Rows: (length, rank) cells; columns: position within each target, "
        "relative to its length (tokens straddling a column count in proportion). Color: mean teacher-forced "
        "probability p_t of the target token; red cells (p_t ≤ 0.5) hold stubborn tokens, which block the "
        "certificate, blue cells are safely memorised.",
        img(probability_grids(grids), "probability grids")) if grids else ""
    c, rho = s["certificate"], s["spearman"]
    facts = [
        ["records", str(s["records"])], ["exact", str(s["exact"])], ["certified", str(s["certified"])],
        ["free-run failures", str(c["failures"])],
        ["Spearman ρ (earliest stubborn, first failure)", "—" if rho["rho"] is None else f"{rho['rho']:.3f}"],
        ["n, p-value", f"{rho['n']}, {format_p(rho['p'])}"],
        ["failures at or after the earliest stubborn token", f"{c['at_or_after']} / {c['pairs']}"],
        ["certificate violations", str(c["violations"])],
    ]
    warnings = [note(f"{c['violations']} failures before the earliest stubborn token (or without one): the "
                     "certificate rules this out, so suspect the evaluation")] if c["violations"] else []
    skipped = s.get("skipped_cells", [])
    if skipped:
        more = f"; … {len(skipped) - MAX_LISTED} more" if len(skipped) > MAX_LISTED else ""
        warnings.append(note(f"skipped {len(skipped)} cells: " + "; ".join(skipped[:MAX_LISTED]) + more))
    phase_part = section(
        "Phase transition", "Where greedy free-run recall first goes wrong. By the certificate, every token before "
        "a record's earliest stubborn position is reproduced, so failures sit on or above the dashed diagonal; "
        "the paper reports Spearman ρ = 0.908 (n = 155) between the two positions.",
        table(None, facts), *warnings,
        img(failure_histograms(s["failure_positions"]), "failure position histograms"),
        img(stubborn_vs_failure(analysis.records, rho), "earliest stubborn against first failure"))
    return grid_part + phase_part
