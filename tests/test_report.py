"""`memlaw report`: one self-contained HTML file from a synthetic sweep (test_analysis.make_sweep)."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from memlaw.analysis import analyze, cell_matrix
from memlaw.cli import main
from memlaw.report import build_report
from memlaw.report.figures import position_grids
from memlaw.report.html import MAX_RANK_PANELS, grid_shape, rank_panels
from test_analysis import DATA_LAW, LAW, assert_one_line_error, cell_name, law_json, make_sweep, planted_record

IMG = '<img src="data:image/png;base64,'


def figure_count(groups: int, law: bool, records: bool = True) -> int:
    """ΔL×2, collapse, [predicted-vs-true], 4 landscapes, EM against rank; with records: probability grids,
    one per-position figure per group, histogram, scatter."""
    return 3 + law + 4 + 1 + (3 + groups if records else 0)


FIGURES_WITH_LAW = figure_count(len(LAW), law=True)
FIGURES_WITHOUT_LAW = figure_count(len(LAW), law=False)


def embedded_pngs(html: str) -> list[np.ndarray]:
    blobs = re.findall(re.escape(IMG) + r'([A-Za-z0-9+/=]+)"', html)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")) for b in blobs]


def colors(image: np.ndarray) -> int:
    """Distinct RGB colors (packed into one integer each: np.unique over rows is slow on large images)."""
    rgb = image.astype(np.uint32)
    return len(np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]))


def assert_self_contained(html: str, figures: int) -> None:
    assert html.count(IMG) == figures
    for needle in ('src="http', "<script", "<link", "url("):
        assert needle not in html
    images = embedded_pngs(html)
    assert len(images) == figures
    for image in images:
        h, w, _ = image.shape
        assert h > 150 and w > 250
        assert colors(image) > 10  # not a blank or single-color image


@pytest.fixture(scope="module")
def sweep_with_law(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("law") / "sweep", law=True, seeds=(0, 1),
                      failed={cell_name("sft", 8, 400, 1)})


def test_report_with_law(sweep_with_law, capsys):
    rc = main(["report", str(sweep_with_law)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    path = sweep_with_law / "report.html"
    assert str(path) in out
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".report.html")] == []  # no temp files
    html = path.read_text(encoding="utf-8")
    assert_self_contained(html, FIGURES_WITH_LAW)
    for method, params in LAW.items():  # the parameter table shows the law's values with their intervals
        assert f"<td>tiny-llama · phonebook · {method}</td>" in html  # v1 file: its combined law has no model
        for v in params.values():
            assert f"{v:.4g} [{v * 0.9:.4g}, {v * 1.1:.4g}]" in html
    assert "0.9870" in html and "1.25%" in html and "<td>combined</td>" in html  # a version-1 law file, upgraded
    assert "no fitted law" not in html
    assert "Exact match per rank and method" in html and "Linear rule" not in html  # no linear-rule cells
    assert "47 ok, 1 failed" in html and cell_name("sft", 8, 400, 1) in html  # the failed-cells table
    assert "CUDA out of memory" in html


def test_report_explicit_law_and_out(sweep_with_law, tmp_path):
    """--law elsewhere, an undefined R² (the fitter writes NaN) and a skipped group; --out elsewhere."""
    law = law_json()
    law["groups"][0]["r2"] = float("nan")
    law["skipped"] = [{"key": {"model": "tiny-llama", "benchmark": "phonebook", "ratio": None, "method": "memft_sw"},
                       "reason": "a single rank"}]
    (tmp_path / "law.json").write_text(json.dumps(law))
    out = build_report(sweep_with_law, law_path=tmp_path / "law.json", out=tmp_path / "r" / "x.html")
    assert out == tmp_path / "r" / "x.html"
    html = out.read_text(encoding="utf-8")
    text = re.sub(re.escape(IMG) + r'[A-Za-z0-9+/=]+"', "", html)
    assert html.count(IMG) == FIGURES_WITH_LAW and ">nan<" not in text.lower()
    assert "<td class=num>—</td><td class=num>1.25%</td>" in text  # the undefined R²
    assert "memft_sw: a single rank" in html


def test_report_without_law(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", ranks=(1, 4), lengths=(100, 400))
    html = build_report(sweep).read_text(encoding="utf-8")
    assert "no fitted law (run memlaw fit)" in html
    assert_self_contained(html, FIGURES_WITHOUT_LAW)


def test_report_single_cell_without_records(tmp_path):
    """One rank and one length, one failed seed, no records.jsonl at all: still a page, minus the phase figures."""
    ok, failed = cell_name("sft", 4, 100, 0), cell_name("sft", 4, 100, 1)
    sweep = make_sweep(tmp_path / "sweep", ranks=(4,), lengths=(100,), methods=("sft",), seeds=(0, 1),
                       failed={failed}, missing_records={ok})
    html = build_report(sweep).read_text(encoding="utf-8")
    assert_self_contained(html, figure_count(1, law=False, records=False))
    assert "no per-record data" in html and failed in html


def test_report_errors(tmp_path, capsys):
    assert_one_line_error(main(["report", str(tmp_path)]), capsys, "results.parquet")
    sweep = make_sweep(tmp_path / "sweep", ranks=(1,), lengths=(100,), methods=("sft",))
    assert_one_line_error(main(["report", str(sweep), "--law", str(tmp_path / "nope.json")]), capsys, "no law file")
    (tmp_path / "bad.json").write_text("{not json")
    assert_one_line_error(main(["report", str(sweep), "--law", str(tmp_path / "bad.json")]), capsys, "cannot read the law")


# ---------------------------------------------------------------------- the paper's remaining evidence
class Tables(HTMLParser):
    """Every <table> of a page as (section title, caption, header, rows of cell texts)."""

    def __init__(self):
        super().__init__()
        self.tables, self.section, self.text, self.row, self.where = [], "", None, None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append({"section": self.section, "caption": "", "header": [], "rows": []})
        elif tag in ("h2", "caption", "th", "td"):
            self.text, self.where = "", tag
        elif tag == "tr":
            self.row = []

    def handle_data(self, data):
        if self.text is not None:
            self.text += data

    def handle_endtag(self, tag):
        if tag == "h2":
            self.section = self.text
        elif tag == "caption":
            self.tables[-1]["caption"] = self.text
        elif tag in ("th", "td"):
            self.row.append(self.text)
        elif tag == "tr":
            t = self.tables[-1]
            (t["rows"] if self.where == "td" else t["header"]).extend([self.row] if self.where == "td" else self.row)
        if tag in ("h2", "caption", "th", "td"):
            self.text = None


def html_tables(html: str) -> list[dict]:
    parser = Tables()
    parser.feed(re.sub(re.escape(IMG) + r'[A-Za-z0-9+/=]+"', "", html))
    return parser.tables


def expected_table(results: pd.DataFrame, bench: str, length: int, columns: tuple[str, str]) -> dict:
    """(method, "r = rank") -> "a / b": means over seeds of the two columns in %, one decimal."""
    d = results[(results["status"] == "ok") & (results["benchmark"] == bench) & (results["length"] == length)]
    means = d.groupby(["method", "rank"])[list(columns)].mean() * 100
    return {(m, f"r = {r}"): f"{v[columns[0]]:.1f} / {v[columns[1]]:.1f}" for (m, r), v in means.iterrows()}


def table_cells(t: dict) -> dict:
    return {(row[0], h): v for row in t["rows"] for h, v in zip(t["header"][1:], row[1:])}


@pytest.fixture(scope="module")
def paper_sweep(tmp_path_factory):
    """Three methods, four ranks, three PhoneBook lengths, two seeds (one cell failed), linear-rule cells; its report."""
    sweep = make_sweep(tmp_path_factory.mktemp("paper") / "sweep", methods=tuple(DATA_LAW), seeds=(0, 1),
                       linear_rule=(50, 100), jitter=True, failed={cell_name("memft_sw", 2, 200, 1)})
    return sweep, build_report(sweep).read_text(encoding="utf-8")


def test_report_main_and_linear_rule_tables_match_results(paper_sweep):
    paper_sweep, html = paper_sweep
    groups = len(DATA_LAW) * 2  # per method: phonebook, linear-rule
    assert_self_contained(html, figure_count(groups, law=False))
    results = pd.read_csv(paper_sweep / "results.csv")
    tables = html_tables(html)
    main_tables = [t for t in tables if t["section"] == "Exact match per rank and method"]
    rule_tables = [t for t in tables if t["section"] == "Linear rule: memorization and generalization"]
    assert [t["caption"] for t in main_tables] == [f"phonebook · ℓ = {n}" for n in (100, 200, 400)]
    assert [t["caption"] for t in rule_tables] == [f"linear-rule · ℓ = {n}" for n in (50, 100)]
    for t in main_tables + rule_tables:
        assert t["header"] == ["method", "r = 1", "r = 2", "r = 4", "r = 8"]
        assert [row[0] for row in t["rows"]] == sorted(DATA_LAW)
        bench, length = t["caption"].split(" · ℓ = ")
        columns = ("exact_match", "token_accuracy") if bench == "phonebook" else ("exact_match", "heldout_exact_match")
        assert table_cells(t) == expected_table(results, bench, int(length), columns)
    # the failed seed is left out of its cell's mean: memft_sw at r 2, ℓ 200 shows seed 0 alone
    seed0 = results[(results["cell"] == cell_name("memft_sw", 2, 200, 0))].iloc[0]
    assert table_cells(main_tables[1])[("memft_sw", "r = 2")] == \
        f"{seed0['exact_match'] * 100:.1f} / {seed0['token_accuracy'] * 100:.1f}"


def test_report_tables_over_lengths_match_results(paper_sweep):
    """The paper-shaped main table (mean over lengths of the per-length means over seeds) and bits per parameter
    (the largest per-length mean), recomputed here from results.csv."""
    paper_sweep, html = paper_sweep
    results = pd.read_csv(paper_sweep / "results.csv")
    ok = results[(results["status"] == "ok") & (results["benchmark"] == "phonebook")]
    tables = {t["section"]: t for t in html_tables(html)}
    main, bits = tables["Exact match per rank over every length"], tables["Bits per parameter per rank"]
    assert main["caption"] == "phonebook · mean over ℓ = 100, 200, 400" and bits["caption"] == "phonebook · max over ℓ = 100, 200, 400"
    for (method, rank), d in ok.groupby(["method", "rank"]):
        per_length = d.groupby("length")[["exact_match", "token_accuracy", "bits_per_param"]].mean()
        em, acc = per_length["exact_match"].mean() * 100, per_length["token_accuracy"].mean() * 100
        assert table_cells(main)[(method, f"r = {rank}")] == f"{em:.1f} / {acc:.1f}"
        assert table_cells(bits)[(method, f"r = {rank}")] == f"{per_length['bits_per_param'].max():.3f}"
    # the largest bits per parameter is at the longest length, the mean of its two seeds (1.00 and 1.01 x ℓ / params)
    assert table_cells(bits)[("memft_sw", "r = 2")] == f"{400 * 1.005 / 200:.3f}"


def test_report_spearman_by_setting(paper_sweep):
    paper_sweep, html = paper_sweep
    [by_table] = [t for t in html_tables(html) if t["caption"] == "ρ within each (benchmark, method)"]
    by = analyze(paper_sweep).summary["spearman_by"]
    assert len(by) == 6 and [row[:4] for row in by_table["rows"]] == [
        [e["benchmark"], e["method"], f"{e['rho']:.3f}", str(e["n"])] for e in by]


def test_rank_panels_cap_and_say_what_is_left_out():
    cells = pd.DataFrame([
        {"model": "m", "benchmark": "long-context", "ratio": ratio, "method": "sft", "rank": rank, "length": length}
        for ratio in ("r20", "r60", "r100") for rank in (1, 4) for length in range(100, 1400, 100)
    ])
    panels, left_out = rank_panels(cells, cells)
    assert len(panels) == MAX_RANK_PANELS == 12
    assert [label for label, _ in panels][:4] == [f"long-context · r20 · ℓ = {n}" for n in (100, 500, 900, 1300)]
    assert "long-context · r100: ℓ = 200, 300, 400, 600" in left_out
    assert rank_panels(cells[cells["length"] <= 400], cells)[1] == ""
    assert grid_shape(8, 7, 24) == (4, 6) and grid_shape(13, 16, 24) == (4, 6) and grid_shape(3, 4, 24) == (3, 4)


def test_position_grids_render_short_long_and_missing_cells():
    short = cell_matrix([planted_record(10, {3: 0.2}, 4)] * 40)
    long = cell_matrix([planted_record(3000, {1234: 0.1}, 1234)])
    png = position_grids("phonebook · sft", {(100, 1): short, (100, 4): long, (400, 1): None})
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert image.shape[0] > 300 and image.shape[1] > 500 and colors(image) > 10


def test_means_over_lengths_say_when_a_length_is_missing():
    from memlaw.report.html import over_lengths

    cells = pd.DataFrame({"model": "m", "benchmark": "phonebook", "ratio": None, "method": ["sft", "sft", "memft_ot"],
                          "rank": 2, "length": [10, 20, 10], "seed": 0, "exact_match": [0.5, 0.25, 1.0]})
    [t] = html_tables(over_lengths(cells, cells, ("exact_match",), "mean", ".1f", 100.0))
    assert table_cells(t) == {("memft_ot", "r = 2"): "100.0 (1 of 2 ℓ)", ("sft", "r = 2"): "37.5"}
