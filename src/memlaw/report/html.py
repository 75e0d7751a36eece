"""`memlaw report`: one self-contained HTML page for a sweep, figures embedded as PNG data URIs."""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path

import pandas as pd

from ..analysis.phase import (
    MAX_MATRIX_POSITIONS,
    MAX_MATRIX_RECORDS,
    PhaseAnalysis,
    cell_matrices,
    load_or_analyze,
    load_results,
    ok_cells,
)
from ..analysis.trajectories import load_trajectories
from ..errors import MemlawError
from ..io import atomic_write_text
from ..law.lawfile import ALL_CELLS, GROUP_KEYS, LAW_FILE, ci_text, group_key, group_label, group_law, law_rows, read_law
from ..tables import finite, format_p, split_by, spread
from .figures import (  # by name: `from . import figures` would import this package, whose __init__ imports us
    Panel,
    any_law,
    delta_loss_curves,
    failure_histograms,
    law_collapse,
    metric_heatmaps,
    position_grids,
    predicted_vs_true,
    probability_grids,
    rank_curves,
    stubborn_trajectories,
    stubborn_vs_failure,
)

FAILED_COLUMNS = ("cell", "method", "ratio", "rank", "length", "seed", "error")
NO_LAW = "no fitted law (run memlaw fit)"
MAX_LISTED = 10  # skipped cells named on the page
SETTING_KEYS = ("model", "benchmark", "ratio")  # a group without its method: what the per-rank tables compare
LINEAR_RULE = "linear-rule"
MAX_RANK_PANELS = 12  # panels of the EM-against-rank figure
MAX_GRID_PANELS = 24  # (length, rank) panels of one group's per-position grids
MAX_TRAJECTORY_PANELS = 9  # traced cells shown in the stubborn-tokens-over-training figure

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
.tables { display: flex; flex-wrap: wrap; gap: 0 2rem; align-items: flex-start; }
caption { text-align: left; font-weight: 600; padding-bottom: .2rem; }
.wide { overflow-x: auto; }
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


def table(header: list[str] | None, rows: list[list[str]], numeric_from: int = 1, caption: str = "") -> str:
    """An HTML table of strings; columns from `numeric_from` on are right-aligned; no header row if None."""
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    head = f"<thead><tr>{''.join(f'<th>{escape(h)}</th>' for h in header)}</tr></thead>" if header else ""
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if i >= numeric_from else ''}>{escape(c)}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table>{cap}{head}<tbody>{body}</tbody></table>"


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def num(x, spec: str = ".4g", suffix: str = "") -> str:
    x = finite(x)
    return "—" if x is None else f"{x:{spec}}{suffix}"


def parameter_table(law: dict) -> str:
    """One row per group and form, the preferred form starred; held-out columns when the fit had a holdout.

    Key values shared by every row (one model, one benchmark) are said once above the table, not per row.
    """
    holdout = law.get("holdout")
    table_rows = law_rows(law, named=False)
    shared = {k for i, k in enumerate(GROUP_KEYS) if len({r["key"][i] for r in table_rows}) == 1}  # said once, above
    rows = []
    for r in table_rows:
        label = group_label(r["key"], omit=shared, named=False)
        params = [ci_text(value, ci, ".3g") for _, value, ci in r["params"][:3]]  # C, α, β: named by the header
        last, value, ci = r["params"][3]
        params.append(f"{last} = {ci_text(value, ci, '.3g')}")  # b or L0: named in the cell, the forms differ here
        if r["combined"]:
            label = "combined" if label == ALL_CELLS else f"combined {label}"
        row = [label, r["form"] + (" *" if r["preferred"] else ""), str(r["n"]),
               *params, num(r["r2"], ".4f"), num(r["mape"], ".2f", "%"), num(r["aic"], ".1f"), num(r["bic"], ".1f")]
        if holdout:
            row += [r["heldout_error"] or str(r["heldout_n"]), num(r["heldout_mape"], ".2f", "%"), num(r["heldout_r2"], ".4f")]
        rows.append(row)
    head = ["group", "form", "n", "C", "α", "β", "b or L0", "R²", "MAPE", "AIC", "BIC"]
    if holdout:
        head += [f"held out ({holdout}): n", "held-out MAPE", "held-out R²"]
    common = ", ".join(f"{k} {r}" for k, r in zip(GROUP_KEYS, table_rows[0]["key"]) if k in shared and r is not None)
    parts = [f"<p>Every group: {escape(common)}.</p>" if common else "", f'<div class="wide">{table(head, rows, numeric_from=2)}</div>']
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


# ---------------------------------------------------------------------- recall per rank and method
def setting_label(key: tuple, ok: pd.DataFrame) -> str:
    """A (model, benchmark, ratio) label; the benchmark always, the model only when the sweep has several."""
    return group_label((*key, None), omit={"model"} if ok["model"].nunique(dropna=False) <= 1 else (), named=False)


def percent_pair(means: pd.DataFrame, method: str, rank: int, columns: tuple[str, str]) -> str:
    if (method, rank) not in means.index:
        return "—"
    return " / ".join(num(means.loc[(method, rank), c], ".1f") for c in columns)


def rank_tables(cells: pd.DataFrame, ok: pd.DataFrame, columns: tuple[str, str]) -> str:
    """One table per (model, benchmark, ratio, length): rows = method, columns = rank, each cell the two
    `columns` in % (means over seeds), as "a / b"."""
    parts = []
    for key, d in split_by(cells, (*SETTING_KEYS, "length")):
        means = d.groupby(["method", "rank"])[list(columns)].mean() * 100
        ranks = sorted(d["rank"].unique())
        rows = [[m, *(percent_pair(means, m, r, columns) for r in ranks)] for m in sorted(d["method"].unique())]
        parts.append(table(["method", *(f"r = {r}" for r in ranks)], rows,
                           caption=f"{setting_label(key[:-1], ok)} · ℓ = {key[-1]}"))
    return f'<div class="tables">{"".join(parts)}</div>'


def over_lengths(cells: pd.DataFrame, ok: pd.DataFrame, columns: tuple[str, ...], how: str, spec: str, scale: float) -> str:
    """One table per (model, benchmark, ratio): rows = method, columns = rank, each cell the `columns` (means over
    seeds per length first, so a length with more seeds does not weigh more) combined over lengths by `how`
    ("mean" or "max"), times `scale`, as "a / b"."""
    parts = []
    for key, d in split_by(cells, SETTING_KEYS):
        per_length = d.groupby(["method", "rank", "length"])[list(columns)].mean()
        combined = per_length.groupby(level=["method", "rank"]).agg(how) * scale
        counts = per_length.groupby(level=["method", "rank"]).size()
        n_lengths = d["length"].nunique()

        def text(m, r) -> str:
            if (m, r) not in combined.index:
                return "—"
            mark = f" ({counts[(m, r)]} of {n_lengths} ℓ)" if counts[(m, r)] < n_lengths else ""  # not comparable
            return " / ".join(num(combined.loc[(m, r), c], spec) for c in columns) + mark

        ranks = sorted(d["rank"].unique())
        rows = [[m, *(text(m, r) for r in ranks)] for m in sorted(d["method"].unique())]
        lengths = ", ".join(map(str, sorted(d["length"].unique())))
        parts.append(table(["method", *(f"r = {r}" for r in ranks)], rows,
                           caption=f"{setting_label(key, ok)} · {how} over ℓ = {lengths}"))
    return f'<div class="tables">{"".join(parts)}</div>'


def left_out(values, kept, symbol: str) -> str:
    """"ℓ = 200, 300": the values a capped figure does not show ("" when it shows them all)."""
    rest = sorted(set(values) - set(kept))
    return f"{symbol} = {', '.join(map(str, rest))}" if rest else ""


def rank_panels(cells: pd.DataFrame, ok: pd.DataFrame) -> tuple[list[tuple[str, pd.DataFrame]], str]:
    """The EM-against-rank panels, at most MAX_RANK_PANELS: per setting, evenly spread lengths; and what was left out."""
    settings = split_by(cells, SETTING_KEYS)
    per_setting = max(1, MAX_RANK_PANELS // len(settings))
    panels, left = [], []
    for n, (key, d) in enumerate(settings):
        label = setting_label(key, ok)
        if n * per_setting >= MAX_RANK_PANELS:
            left.append(f"{label} (all lengths)")
            continue
        lengths = spread(d["length"].unique(), per_setting)
        panels += [(f"{label} · ℓ = {length}", d[d["length"] == length]) for length in lengths]
        if dropped := left_out(d["length"], lengths, "ℓ"):
            left.append(f"{label}: {dropped}")
    return panels, (f"Not shown, to keep {MAX_RANK_PANELS} panels at most: " + "; ".join(left)) if left else ""


def recall_sections(ok: pd.DataFrame) -> str:
    """The paper's main table and Figure 4 (memorization benchmarks), and its linear-rule generalization table."""
    memo = ok[ok["benchmark"] != LINEAR_RULE]
    rule = ok[ok["benchmark"] == LINEAR_RULE]
    parts = []
    if not memo.empty:
        panels, left_out = rank_panels(memo, ok)
        parts.append(section(
            "Exact match per rank and method", "The paper's main table: one table per length; each cell is "
            "exact match % / token accuracy % (teacher-forced), means over seeds. Linear-rule cells, if any, "
            "have their own table below.", rank_tables(memo, ok, ("exact_match", "token_accuracy"))))
        parts.append(section(
            "Exact match per rank over every length", "The paper's main table in its own shape (one row per method, "
            "one column per rank): exact match % / token accuracy %, the mean over the lengths of each length's mean "
            "over seeds.", over_lengths(memo, ok, ("exact_match", "token_accuracy"), "mean", ".1f", 100.0)))
        parts.append(section(
            "Bits per parameter per rank", "Capacity in the units of the published anchors (about 2 bits/param for "
            "whole models' knowledge, Allen-Zhu & Li 2024; 3.6 for GPT-style models memorizing random bits, Morris "
            "et al. 2025): the information of the records recalled exactly (bits_memorized: 31.9 bits per PhoneBook "
            "number, docs/law.md) per trainable parameter, the largest over the lengths (means over seeds). Tables "
            "written before memlaw counted information hold the loss removed in bits here, an upper bound that "
            "includes learning the answers' format.",
            over_lengths(memo, ok, ("bits_per_param",), "max", ".3f", 1.0)))
        parts.append(section(
            "Exact match and token accuracy against rank", "One panel per length, one color per method: exact "
            "match solid, teacher-forced token accuracy dashed, means over seeds, on a log₂ rank axis. Token "
            "accuracy usually saturates at a lower rank than exact match, which needs every token of a record right.",
            note(left_out) if left_out else "", img(rank_curves(panels), "exact match and token accuracy against rank")))
    if not rule.empty:
        parts.append(section(
            "Linear rule: memorization and generalization", "Each cell: memory EM % (the training pairs "
            "f(x, y) = 3x + 5y + 7, recalled verbatim) / generalization EM % (held-out pairs the unit never saw), "
            "means over seeds. Held-out EM well above zero means the unit learned the rule, not only the pairs.",
            rank_tables(rule, ok, ("exact_match", "heldout_exact_match"))))
    return "".join(parts)


def grid_shape(lengths: int, ranks: int, cap: int) -> tuple[int, int]:
    """How many lengths and ranks to show so that lengths × ranks ≤ cap: as many panels as possible, then as square."""
    return max(((a, min(ranks, cap // a)) for a in range(1, min(lengths, cap) + 1)), key=lambda ab: (ab[0] * ab[1], min(ab)))


def lowest_seed(cells: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    """One row per distinct `keys`: its lowest seed, the run the per-cell figures show."""
    return cells.sort_values("seed").drop_duplicates(list(keys))


def position_sections(sweep_dir: Path, ok: pd.DataFrame) -> str:
    """Per group, the per-position p_t grids of its (length, rank) cells, read from their records.jsonl."""
    figures, left = [], []
    for key, d in split_by(ok, GROUP_KEYS):
        label = title(key, ok)
        lengths, ranks = sorted(d["length"].unique()), sorted(d["rank"].unique())
        n_len, n_rank = grid_shape(len(lengths), len(ranks), MAX_GRID_PANELS)
        keep_len, keep_rank = spread(lengths, n_len), spread(ranks, n_rank)
        first = lowest_seed(d[d["length"].isin(keep_len) & d["rank"].isin(keep_rank)], ("length", "rank"))
        matrices = cell_matrices(sweep_dir, first)
        cells = {(int(r["length"]), int(r["rank"])): matrices.get(str(r["cell"])) for r in first.to_dict("records")}
        dropped = [t for t in (left_out(lengths, keep_len, "ℓ"), left_out(ranks, keep_rank, "r")) if t]
        if dropped:
            left.append(f"{label}: {' and '.join(dropped)}")
        figures.append(img(position_grids(label, cells), f"per-position probability grids, {label}"))
    return section(
        "Per-position probability grids", "The paper's Figure 5. One figure per group, one panel per (length, "
        f"rank) cell (its lowest seed): rows are the cell's first records (at most {MAX_MATRIX_RECORDS}, in record "
        "order), columns the positions of each target. Color: teacher-forced p_t (red ≤ 0.5 < blue, grey past a "
        "record's end); a black bar runs under the stubborn tokens (p_t ≤ 0.5), a cross marks the record's first "
        f"free-run failure. Targets longer than {MAX_MATRIX_POSITIONS} tokens are pooled into columns that show "
        "the minimum p_t of their tokens, so a stubborn token is never hidden (the panel title says how many "
        "tokens a column holds). Failures sit at or after the first bar of their row.",
        note(f"Not shown, to keep at most {MAX_GRID_PANELS} panels per figure (lengths and ranks evenly spread): "
             + "; ".join(left)) if left else "", *figures)


def trajectory_section(sweep_dir: Path, ok: pd.DataFrame) -> str:
    """Stubborn tokens over training (Figure 3a), for the cells trained with --log-token-probs."""
    first = lowest_seed(ok, (*GROUP_KEYS, "length", "rank"))
    traces = load_trajectories(sweep_dir, first)
    how = ("The paper's Figure 3a. For cells trained with --log-token-probs N: the teacher-forced p_t of each answer "
           "token over the optimizer steps (grey: a sample of all tokens; colour: the tokens that crossed p_t > 0.5 "
           "last, or never), with the fraction of tokens above 0.5 in black. Most tokens cross early; a record is "
           "certified only when its stubborn tokens cross too.")
    if not traces:
        return section("Stubborn tokens over training", how,
                       note("no cell has a token trace: train with --log-token-probs N (e.g. 10) to record one"))
    rows = [r for r in first.to_dict("records") if str(r["cell"]) in traces]
    shown = [rows[i] for i in spread(range(len(rows)), MAX_TRAJECTORY_PANELS)]
    panels = [(f"{title(tuple(r[k] for k in GROUP_KEYS), ok)} · ℓ {r['length']} · r {r['rank']}", traces[str(r["cell"])])
              for r in shown]
    left = note(f"{len(rows) - len(shown)} of the {len(rows)} traced cells not shown (evenly spread)") if len(shown) < len(rows) else ""
    return section("Stubborn tokens over training", how, left, img(stubborn_trajectories(panels), "stubborn tokens over training"))


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
        "ΔL against rank", "Loss reduction per trained token (mean over seeds: line; single seeds: dots) on log-log "
        "axes, one line per length; the dashed curves are the fitted law. Higher rank stores more, so lines rise.",
        law_note, img(delta_loss_curves(panels, "rank"), "delta loss against rank")))
    parts.append(section(
        "ΔL against length", "The same cells, one line per rank, against the total answer length. A fixed capacity "
        "spread over more tokens lowers the per-token reduction, so lines fall with slope about −β.",
        img(delta_loss_curves(panels, "length"), "delta loss against length")))
    parts.append(section(
        "The law in log space", "Made rank-free by the group's preferred law (paper's form: (ΔL − b) / r^α; bounded: "
        "(ΔL / (L0 − ΔL)) / r^α), every rank should collapse onto one straight line C · ℓ^(−β) on log-log axes (the "
        "plane log(ΔL − b) = log C + α log r − β log ℓ seen edge-on). Spread around the dashed line is what the law "
        "misses. Without a fit this shows plain ΔL against ℓ.",
        img(law_collapse(panels), "log-space collapse")))
    if fitted:
        parts.append(section(
            "Predicted vs measured ΔL", "One point per cell: the fitted law's prediction against the measurement; "
            "points on the identity line are predicted exactly.",
            img(predicted_vs_true(panels), "predicted against measured delta loss")))
    parts.append(section(
        "Landscapes over rank × length", "Mean over seeds per (rank, length). Final loss is the teacher-forced "
        "answer loss after training; token accuracy the teacher-forced argmax accuracy; exact match the fraction "
        "of records reproduced verbatim by greedy free-run decoding (the memory landscape, one panel per method); "
        "free-run token accuracy the fraction of target tokens greedy decoding gets right (the paper's "
        "Long-Context metric).",
        img(metric_heatmaps(panels, "final_loss", "final loss (nats / token)", vmin=0.0, cmap="magma_r"),
            "final loss heatmaps"),
        img(metric_heatmaps(panels, "token_accuracy", "token accuracy", 0.0, 1.0), "token accuracy heatmaps"),
        img(metric_heatmaps(panels, "exact_match", "exact match (EM)", 0.0, 1.0), "exact match heatmaps"),
        img(metric_heatmaps(panels, "free_run_token_accuracy", "free-run token accuracy", 0.0, 1.0),
            "free-run token accuracy heatmaps")))
    parts.append(recall_sections(ok))
    parts.append(trajectory_section(sweep_dir, ok))
    parts.append(phase_sections(analysis, ok, sweep_dir))
    parts.append(failed_table(results))
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>memlaw report — {escape(sweep_dir.resolve().name)}</title><style>{CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")


def phase_sections(analysis: PhaseAnalysis | str, ok: pd.DataFrame, sweep_dir: Path) -> str:
    """Probability grids, per-position grids and the phase transition, or why they are missing."""
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
    grid_part += position_sections(sweep_dir, ok)
    c, rho = s["certificate"], s["spearman"]
    facts = [
        ["records", str(s["records"])], ["exact", str(s["exact"])], ["certified", str(s["certified"])],
        ["free-run failures", str(c["failures"])],
        ["Spearman ρ (earliest stubborn, first failure)", "—" if rho["rho"] is None else f"{rho['rho']:.3f}"],
        ["n, p-value", f"{rho['n']}, {format_p(rho['p'])}"],
        ["failures at or after the earliest stubborn token", f"{c['at_or_after']} / {c['pairs']}"],
        ["certificate violations", str(c["violations"])],
    ]
    by = s.get("spearman_by")
    by_part = note("no per-setting ρ: DIR/analysis/phase.json predates it (re-run memlaw analyze)") if by is None else table(
        ["benchmark", "method", "Spearman ρ", "n", "p-value"],
        [[e["benchmark"], e["method"], num(e["rho"], ".3f"), str(e["n"]), format_p(e["p"])] for e in by],
        numeric_from=2, caption="ρ within each (benchmark, method)")
    warnings = [note(f"{c['violations']} failures before the earliest stubborn token (or without one): the "
                     "certificate rules this out, so suspect the evaluation")] if c["violations"] else []
    skipped = s.get("skipped_cells", [])
    if skipped:
        more = f"; … {len(skipped) - MAX_LISTED} more" if len(skipped) > MAX_LISTED else ""
        warnings.append(note(f"skipped {len(skipped)} cells: " + "; ".join(skipped[:MAX_LISTED]) + more))
    phase_part = section(
        "Phase transition", "Where greedy free-run recall first goes wrong. By the certificate, every token before "
        "a record's earliest stubborn position is reproduced, so failures sit on or above the dashed diagonal; "
        "the paper reports Spearman ρ = 0.908 (n = 155) between the two positions within one setting. The left "
        "table pools every record; the right one gives ρ within each (benchmark, method).",
        f'<div class="tables">{table(None, facts)}{by_part}</div>', *warnings,
        img(failure_histograms(s["failure_positions"]), "failure position histograms"),
        img(stubborn_vs_failure(analysis.records, rho), "earliest stubborn against first failure"))
    return grid_part + phase_part
