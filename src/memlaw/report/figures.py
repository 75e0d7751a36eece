"""Report figures: each function takes tables and returns one PNG (bytes).

Matplotlib's object API on the Agg canvas (``Figure.savefig``): no pyplot, no global backend.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

from ..law.fit import ParametricMemoryLaw
from ..tables import finite, format_rho

if TYPE_CHECKING:
    from ..analysis.phase import CellMatrix
    from ..analysis.trajectories import Trajectory

DPI = 100
PANEL_W, PANEL_H = 4.6, 3.6
MAX_COLS = 3
MAX_TICKS = 12  # label every data value on an axis when there are at most this many
ANNOTATE_CELLS = 80  # write the value in each heatmap cell when a panel has at most this many
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 7.5,
    "figure.facecolor": "white",
}
SYMBOL = {"rank": "r", "length": "ℓ"}
COLLAPSED = {"paper": r"$(\Delta L - b)\,/\,r^{\alpha}$", "bounded": r"$\Delta L\,/\,(L_0 - \Delta L)\,/\,r^{\alpha}$"}
GRID_W, GRID_H = 2.6, 2.1  # one per-position grid panel
STUBBORN_BAR_PT = 2.5  # thickness of the bar under a run of stubborn tokens


@dataclass(frozen=True)
class Panel:
    """One group (model, benchmark, ratio, method): its label, ok cells (results rows) and fitted law, if any.

    The law is the fitter's own ParametricMemoryLaw (from law.json), so the curves drawn are its predict().
    """

    label: str
    cells: pd.DataFrame
    law: ParametricMemoryLaw | None = None


def _png(build):
    """Run a figure builder under the report style and return the figure as PNG bytes."""

    @functools.wraps(build)
    def render(*args, **kwargs) -> bytes:
        with matplotlib.rc_context(STYLE):
            fig = build(*args, **kwargs)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=DPI)
        return buf.getvalue()

    return render


def _facets(n: int, panel_h: float = PANEL_H) -> tuple[Figure, list]:
    ncols = max(1, min(n, MAX_COLS))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(PANEL_W * ncols, panel_h * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _colors(n: int) -> np.ndarray:
    return matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, max(n, 1)))


def _color_of(panels: list[Panel], column: str) -> dict:
    """One color per value of `column` across all panels, so a value looks the same everywhere."""
    values = sorted({v for p in panels for v in p.cells[column].tolist()})
    return dict(zip(values, _colors(len(values))))


def _legend(fig: Figure, color_of: dict, column: str, marker_line: str, extra: list[Line2D]) -> None:
    """One legend for the whole figure, outside the panels on the right."""
    style = {"marker": "o", "ms": 4, "ls": "-" if marker_line == "line" else ""}
    handles = [Line2D([], [], color=c, label=f"{SYMBOL[column]} = {_compact(v)}", **style) for v, c in color_of.items()]
    fig.legend(handles=handles + extra, loc="outside right upper")


def _compact(v) -> str:
    v = float(v)
    if v >= 1000 and v % 1000 == 0:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def _value_ticks(axis, values) -> None:
    """Ticks at the data's own values on a log axis (when few), labelled compactly."""
    values = sorted(set(float(v) for v in values))
    if len(values) > MAX_TICKS:
        return
    axis.set_major_locator(FixedLocator(values))
    axis.set_minor_locator(NullLocator())
    axis.set_ticklabels([_compact(v) for v in values])


def _plain_log_labels(axis) -> None:
    """Log-axis labels as plain numbers (0.3, 2) instead of 3×10⁻¹, 2×10⁰."""
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "1235" else ""))


def _span(values) -> np.ndarray:
    """A dense log-spaced range over the data's values (widened around a single value)."""
    lo, hi = float(np.min(values)), float(np.max(values))
    if lo == hi:
        lo, hi = lo / 2, hi * 2
    return np.geomspace(lo, hi, 60)


def any_law(panels: list[Panel]) -> bool:
    """Whether any panel has a fitted law (the legends and the predicted-vs-measured figure need one)."""
    return any(p.law is not None for p in panels)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True in a 1-D mask."""
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.3")


# ---------------------------------------------------------------------- ΔL and the law
@_png
def delta_loss_curves(panels: list[Panel], x: str) -> Figure:
    """ΔL against `x` ("rank" or "length") on log-log axes, one line per value of the other; fits dashed."""
    series = "length" if x == "rank" else "rank"
    color_of = _color_of(panels, series)
    fig, axes = _facets(len(panels))
    for ax, p in zip(axes, panels):
        hidden = int((p.cells["delta_loss"] <= 0).sum())
        for s in sorted(p.cells[series].unique()):
            color = color_of[s]
            d = p.cells[(p.cells[series] == s) & (p.cells["delta_loss"] > 0)]
            mean = d.groupby(x)["delta_loss"].mean()
            ax.scatter(d[x], d["delta_loss"], s=9, color=color, alpha=0.35, linewidths=0)
            ax.plot(mean.index, mean.to_numpy(), "o-", color=color, ms=3.5, lw=1.3)
            if p.law is not None:
                xs = _span(p.cells[x])
                ys = p.law.predict(xs, s) if x == "rank" else p.law.predict(s, xs)
                ax.plot(xs, np.where(ys > 0, ys, np.nan), "--", color=color, lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        _value_ticks(ax.xaxis, p.cells[x])
        _plain_log_labels(ax.yaxis)
        ax.set_xlabel(f"{x} {SYMBOL[x]}")
        ax.set_ylabel("ΔL (nats / answer token)")
        ax.set_title(p.label + (f"  ({hidden} cells with ΔL ≤ 0 not shown)" if hidden else ""))
    fitted = [Line2D([], [], color="0.3", ls="--", label="fitted law")] if any_law(panels) else []
    _legend(fig, color_of, series, "line", fitted)
    return fig


@_png
def law_collapse(panels: list[Panel]) -> Figure:
    """The law in log space: ΔL made rank-free (paper's form: (ΔL − b) / r^α; bounded: (ΔL / (L0 − ΔL)) / r^α)
    against ℓ, log-log; under the law every rank falls on the line C·ℓ^(−β).

    A panel without a fit shows plain ΔL against ℓ.
    """
    color_of = _color_of(panels, "rank")
    fig, axes = _facets(len(panels))
    for ax, p in zip(axes, panels):
        d = p.cells
        if p.law is not None:
            y = pd.Series(p.law.collapse(d["rank"], d["delta_loss"]), index=d.index)
        else:
            y = d["delta_loss"]
        for r in sorted(d["rank"].unique()):
            keep = (d["rank"] == r) & (y > 0)
            ax.scatter(d["length"][keep], y[keep], s=16, color=color_of[r])
        if p.law is not None:
            xs = _span(d["length"])
            ax.plot(xs, p.law.C_ * xs ** (-p.law.beta_), "k--", lw=1.2)  # the law's C·ℓ^(−β) term, not a ΔL prediction
        ax.set_xscale("log")
        ax.set_yscale("log")
        _value_ticks(ax.xaxis, d["length"])
        _plain_log_labels(ax.yaxis)
        ax.set_xlabel("length ℓ (answer tokens)")
        ax.set_ylabel(COLLAPSED[p.law.form] if p.law is not None else "ΔL (no fitted law)")
        dropped = int((y <= 0).sum())
        ax.set_title(p.label + (f"  ({dropped} points ≤ 0 not shown)" if dropped else ""))
    line = [Line2D([], [], color="k", ls="--", label="C·ℓ^(−β)")] if any_law(panels) else []
    _legend(fig, color_of, "rank", "markers", line)
    return fig


@_png
def predicted_vs_true(panels: list[Panel]) -> Figure:
    """Each ok cell's measured ΔL against its group's prediction, with the identity line."""
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.subplots()
    fitted = [p for p in panels if p.law is not None]
    seen = []
    for color, p in zip(_colors(len(fitted)), fitted):
        true = p.cells["delta_loss"].to_numpy(dtype=float)
        pred = p.law.predict(p.cells["rank"], p.cells["length"])
        seen.extend([true, pred])
        r2, mape = finite(p.law.r2_), finite(p.law.mape_)  # NaN (undefined, or absent from law.json): not shown
        stats = []
        if r2 is not None:
            stats.append(f"R² {r2:.3f}")
        if mape is not None:
            stats.append(f"MAPE {mape:.2f}%")
        ax.scatter(true, pred, s=16, color=color, alpha=0.8, label=f"{p.label}  ({', '.join(stats)})" if stats else p.label)
    values = np.concatenate(seen)
    lo, hi = float(values.min()), float(values.max())
    pad = 0.05 * (hi - lo or 1.0)
    line = [lo - pad, hi + pad] if lo <= 0 else [lo / 1.15, hi * 1.15]
    ax.plot(line, line, "k-", lw=0.8, label="identity")
    if lo > 0:
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_labels(ax.xaxis)
        _plain_log_labels(ax.yaxis)
    ax.set_xlim(line)
    ax.set_ylim(line)
    ax.set_aspect("equal")
    ax.set_xlabel("measured ΔL")
    ax.set_ylabel("predicted ΔL (each group's preferred form)")
    ax.legend(loc="upper left")
    return fig


# ---------------------------------------------------------------------- landscapes over rank × length
@_png
def metric_heatmaps(panels: list[Panel], column: str, label: str, vmin: float | None = None,
                    vmax: float | None = None, cmap: str = "viridis") -> Figure:
    """`column` (mean over seeds) over rank × length, one panel per group, one color scale."""
    tables = [p.cells.pivot_table(index="rank", columns="length", values=column, aggfunc="mean", dropna=False)
              for p in panels]
    every = np.concatenate([t.to_numpy(dtype=float).ravel() for t in tables])
    finite = every[np.isfinite(every)]
    lo = vmin if vmin is not None else (float(finite.min()) if len(finite) else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if len(finite) else 1.0)
    if hi <= lo:
        hi = lo + 1.0
    fig, axes = _facets(len(panels))
    image = None
    for ax, p, t in zip(axes, panels, tables):
        grid = t.to_numpy(dtype=float)
        image = ax.imshow(grid, origin="lower", aspect="auto", cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_xticks(range(len(t.columns)), [_compact(v) for v in t.columns])
        ax.set_yticks(range(len(t.index)), [_compact(v) for v in t.index])
        ax.grid(False)
        ax.set_xlabel("length ℓ")
        ax.set_ylabel("rank r")
        ax.set_title(p.label)
        if grid.size <= ANNOTATE_CELLS:
            for (i, j), v in np.ndenumerate(grid):
                if np.isfinite(v):
                    r, g, b, _ = image.cmap(image.norm(v))
                    shade = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color=shade)
    fig.colorbar(image, ax=axes, label=label, shrink=0.85)
    fig.suptitle(label, fontweight="bold")
    return fig


@_png
def probability_grids(grids: list[tuple[str, pd.DataFrame]]) -> Figure:
    """Mean teacher-forced p_t over relative target position (columns) for each (length, rank) (rows).

    `grids` holds one (label, prob_grid rows) per group. Color: red below 0.5 (stubborn), blue above.
    """
    tables = [g.pivot_table(index=["length", "rank"], columns="bin", values="mean_p") for _, g in grids]
    rows = max(len(t) for t in tables)
    fig, axes = _facets(len(grids), panel_h=max(PANEL_H, 0.17 * rows + 1.4))
    image = None
    for ax, (label, _), t in zip(axes, grids, tables):
        n = len(t)
        image = ax.imshow(t.to_numpy(dtype=float), aspect="auto", cmap="RdBu", vmin=0.0, vmax=1.0,
                          extent=(0.0, 1.0, n - 0.5, -0.5), interpolation="nearest")
        step = max(1, math.ceil(n / 40))
        ticks = list(range(0, n, step))
        ax.set_yticks(ticks, [f"ℓ {_compact(t.index[i][0])} · r {_compact(t.index[i][1])}" for i in ticks], fontsize=7.5)
        ax.grid(False)
        ax.set_xlabel("relative position in the target")
        ax.set_title(label)
    fig.colorbar(image, ax=axes, label="mean p_t  (≤ 0.5: stubborn)", shrink=0.85)
    return fig


@_png
def rank_curves(panels: list[tuple[str, pd.DataFrame]]) -> Figure:
    """EM (solid) and token accuracy (dashed) in % against rank, one line per method (the paper's Figure 4).

    `panels` holds one (label, ok cells) per (model, benchmark, ratio, length); values are means over seeds.
    """
    methods = sorted({m for _, d in panels for m in d["method"]})
    color_of = dict(zip(methods, _colors(len(methods))))
    fig, axes = _facets(len(panels))
    for ax, (label, d) in zip(axes, panels):
        means = d.groupby(["method", "rank"])[["exact_match", "token_accuracy"]].mean() * 100
        for method in sorted(d["method"].unique()):
            m = means.loc[method]
            ax.plot(m.index, m["exact_match"], "o-", color=color_of[method], ms=3.5, lw=1.4)
            ax.plot(m.index, m["token_accuracy"], "s--", color=color_of[method], ms=2.5, lw=1.1)
        ranks = sorted(d["rank"].unique())
        powers = [r for r in ranks if r & (r - 1) == 0]  # too many ranks to label: the powers of two
        ax.set_xscale("log", base=2)
        _value_ticks(ax.xaxis, ranks if len(ranks) <= MAX_TICKS or not powers else powers)
        ax.set_ylim(-4, 104)
        ax.set_xlabel("rank r")
        ax.set_ylabel("%")
        ax.set_title(label)
    handles = [Line2D([], [], color=c, marker="o", ms=4, label=m) for m, c in color_of.items()]
    handles += [Line2D([], [], color="0.3", ls="-", label="exact match"),
                Line2D([], [], color="0.3", ls="--", label="token accuracy")]
    fig.legend(handles=handles, loc="outside right upper")
    return fig


@_png
def position_grids(title: str, cells: dict[tuple[int, int], CellMatrix | None]) -> Figure:
    """One group's per-position teacher-forced p_t (the paper's Figure 5): a panel per (length, rank) cell,
    records down, target positions across; a bar under stubborn tokens, a cross at each record's first failure.

    Marks, not only color, so the stubborn tokens survive greyscale printing; a bar (not a dot per token) stays
    readable when a column is a fraction of a point wide. None: a cell without records.
    """
    lengths = sorted({length for length, _ in cells})
    ranks = sorted({rank for _, rank in cells})
    fig = Figure(figsize=(GRID_W * len(ranks) + 1.3, GRID_H * len(lengths) + 1.0), layout="constrained")
    axes = fig.subplots(len(lengths), len(ranks), squeeze=False)
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="0.85")
    image = None
    for (i, length), (j, rank) in ((a, b) for a in enumerate(lengths) for b in enumerate(ranks)):
        ax = axes[i, j]
        if (length, rank) not in cells:
            ax.set_visible(False)
            continue
        m = cells[(length, rank)]
        head = f"ℓ {_compact(length)} · r {_compact(rank)}"
        ax.grid(False)
        if m is None or not m.probs.size:
            ax.set_title(head, fontsize=8)
            _note(ax, "no records")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        rows, columns = m.probs.shape
        span = columns * m.width
        image = ax.imshow(m.probs, aspect="auto", cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest",
                          extent=(0.0, span, rows - 0.5, -0.5))
        row_pt = GRID_H * 72 * 0.6 / rows  # about: the axes take some 60% of the panel's height
        bar = min(0.22, STUBBORN_BAR_PT / row_pt)  # in rows: a fifth of a row, at most 2.5 pt
        w, low = m.width, 0.48  # bars sit at the bottom of their row (y grows downwards)
        boxes = [[(a * w, row + low), (b * w, row + low), (b * w, row + low - bar), (a * w, row + low - bar)]
                 for row, mask in enumerate(m.stubborn) for a, b in _runs(mask)]
        # pooled: edges too, as a lone token's column is narrower than a pixel
        ax.add_collection(PolyCollection(boxes, facecolors="black", edgecolors="black",
                                         linewidths=0.6 if m.width > 1 else 0))
        failed = [(row, col) for row, col in enumerate(m.failures) if col is not None]
        if failed:
            ax.scatter([(col + 0.5) * m.width for _, col in failed], [row for row, _ in failed], marker="x",
                       s=min(6.0, max(3.5, 1.4 * row_pt)) ** 2, color="black", linewidths=1.3,
                       path_effects=[patheffects.withStroke(linewidth=2.8, foreground="white")])
        ax.set_xlim(0.0, span)
        ax.set_ylim(rows - 0.5, -0.5)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.tick_params(labelsize=7)
        caps = [f"{rows} of {m.records} records"] if rows < m.records else []
        caps += [f"column = min of {m.width} tokens"] if m.width > 1 else []
        ax.set_title("\n".join([head, ", ".join(caps)]) if caps else head, fontsize=8)
        if i == len(lengths) - 1 or (lengths[i + 1], rank) not in cells:
            ax.set_xlabel("target position (token)", fontsize=8)
        if j == 0 or (length, ranks[j - 1]) not in cells:
            ax.set_ylabel("record", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), label="teacher-forced p_t  (≤ 0.5: stubborn)", shrink=0.8)
    fig.legend(handles=[
        Line2D([], [], color="black", lw=2.5, label="under stubborn tokens (p_t ≤ 0.5)"),
        Line2D([], [], color="black", marker="x", ms=6, mew=1.3, ls="", label="first free-run failure"),
    ], loc="outside lower center", ncols=2)
    fig.suptitle(title, fontweight="bold")
    return fig


# ---------------------------------------------------------------------- phase transition
@_png
def failure_histograms(histograms: dict) -> Figure:
    """First free-run failure positions: absolute (tokens) and relative to the target length."""
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    for ax, name, xlabel in zip(
        fig.subplots(1, 2),
        ("absolute", "relative"),
        ("first failure position (token index)", "first failure position / target length"),
    ):
        part = histograms[name]
        edges, counts = np.asarray(part["edges"]), np.asarray(part["counts"])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("records")
        if counts.sum() == 0:
            _note(ax, "no free-run failures")
            continue
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4c72b0", edgecolor="white")
        median = part["quartiles"][1]
        ax.axvline(median, color="#c44e52", lw=1.2, ls="--", label=f"median {median:.3g}")
        ax.legend()
    return fig


@_png
def stubborn_vs_failure(records: pd.DataFrame, rho: dict) -> Figure:
    """Earliest stubborn position against first free-run failure, one marker per (x, y) sized by count."""
    fig = Figure(figsize=(6.4, 5.2), layout="constrained")
    ax = fig.subplots()
    pairs = records[records["earliest_stubborn"].notna() & records["first_failure"].notna()]
    ax.set_xlabel("earliest stubborn position (p_t ≤ 0.5, teacher-forced)")
    ax.set_ylabel("first free-run failure position")
    if pairs.empty:
        _note(ax, "no record has both a stubborn token and a failure")
        return fig
    methods = sorted(pairs["method"].unique())
    for color, method in zip(_colors(len(methods)), methods):
        counts = pairs[pairs["method"] == method].groupby(["earliest_stubborn", "first_failure"]).size()
        x = counts.index.get_level_values(0).to_numpy(dtype=float)
        y = counts.index.get_level_values(1).to_numpy(dtype=float)
        ax.scatter(x, y, s=12 + 10 * np.sqrt(counts.to_numpy()), color=color, alpha=0.55, linewidths=0, label=method)
    top = float(max(pairs["earliest_stubborn"].max(), pairs["first_failure"].max())) + 1
    ax.plot([0, top], [0, top], "k--", lw=0.8, label="failure at the earliest stubborn token")
    ax.set_title(format_rho(rho))
    ax.legend(loc="upper left", title="marker area ∝ √records")
    return fig


# ---------------------------------------------------------------------- stubborn tokens over training
TRAJECTORY_BACKGROUND = 40  # tokens drawn faintly per panel, evenly spread over the record order
TRAJECTORY_HIGHLIGHT = 6  # the tokens that crossed the threshold last, drawn in colour


@_png
def stubborn_trajectories(panels: list[tuple[str, Trajectory]]) -> Figure:
    """p_t over training steps per cell: a faint sample of all tokens, the last tokens to cross p = 0.5 in
    colour, and the fraction of tokens above the threshold (black)."""
    fig, axes = _facets(len(panels))
    for ax, (label, t) in zip(axes, panels):
        tokens = t.probs.shape[1]
        sample = np.unique(np.linspace(0, tokens - 1, min(tokens, TRAJECTORY_BACKGROUND)).round().astype(int))
        ax.plot(t.steps, t.probs[:, sample], color="0.6", lw=0.6, alpha=0.5)
        last = t.last_to_cross(TRAJECTORY_HIGHLIGHT)
        crossing = t.crossing_steps()
        for color, i in zip(matplotlib.colormaps["autumn"](np.linspace(0.0, 0.8, max(len(last), 1))), last):
            ax.plot(t.steps, t.probs[:, i], color=color, lw=1.4)
        ax.plot(t.steps, t.above_fraction(), color="black", lw=2.0)
        ax.axhline(t.threshold, color="0.2", ls="--", lw=0.8)
        ax.set_ylim(-0.02, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("teacher-forced p_t")
        stubborn = int(np.isinf(crossing).sum())
        ax.set_title(f"{label}  ({tokens} tokens, {stubborn} still ≤ 0.5 at the end)")
    fig.legend(handles=[
        Line2D([], [], color="0.6", lw=0.8, label=f"a sample of {TRAJECTORY_BACKGROUND} tokens"),
        Line2D([], [], color="#ff4000", lw=1.4, label=f"the {TRAJECTORY_HIGHLIGHT} tokens that crossed 0.5 last (or never)"),
        Line2D([], [], color="black", lw=2.0, label="fraction of tokens with p_t > 0.5"),
        Line2D([], [], color="0.2", ls="--", lw=0.8, label="threshold p_t = 0.5"),
    ], loc="outside lower center", ncols=4)
    return fig
