"""`memlaw report`: one self-contained HTML file from a synthetic sweep (test_analysis.make_sweep)."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from memlaw.cli import main
from memlaw.report import build_report
from test_analysis import LAW, assert_one_line_error, cell_name, law_json, make_sweep

IMG = '<img src="data:image/png;base64,'
FIGURES_WITH_LAW = 10  # ΔL×2, collapse, predicted-vs-true, 3 landscapes, probability grids, histogram, scatter
FIGURES_WITHOUT_LAW = FIGURES_WITH_LAW - 1  # no predicted-vs-true


def embedded_pngs(html: str) -> list[np.ndarray]:
    blobs = re.findall(re.escape(IMG) + r'([A-Za-z0-9+/=]+)"', html)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")) for b in blobs]


def assert_self_contained(html: str, figures: int) -> None:
    assert html.count(IMG) == figures
    for needle in ('src="http', "<script", "<link", "url("):
        assert needle not in html
    images = embedded_pngs(html)
    assert len(images) == figures
    for image in images:
        h, w, _ = image.shape
        assert h > 150 and w > 250
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10  # not a blank or single-color image


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
        assert f"tiny-llama · phonebook · {method}" in html
        for v in params.values():
            assert f"{v:.4g} [{v * 0.9:.4g}, {v * 1.1:.4g}]" in html
    assert "0.9870" in html and "1.25%" in html and "combined all cells" in html  # a version-1 law file, upgraded
    assert "no fitted law" not in html
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
    assert_self_contained(html, 6)  # ΔL×2, collapse, 3 landscapes
    assert "no per-record data" in html and failed in html


def test_report_errors(tmp_path, capsys):
    assert_one_line_error(main(["report", str(tmp_path)]), capsys, "results.parquet")
    sweep = make_sweep(tmp_path / "sweep", ranks=(1,), lengths=(100,), methods=("sft",))
    assert_one_line_error(main(["report", str(sweep), "--law", str(tmp_path / "nope.json")]), capsys, "no law file")
    (tmp_path / "bad.json").write_text("{not json")
    assert_one_line_error(main(["report", str(sweep), "--law", str(tmp_path / "bad.json")]), capsys, "cannot read the law")
