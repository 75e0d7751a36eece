"""benchmarks/gpu_check.py --dry-run: the GPU check's every part runs on the CPU at tiny sizes, so the script works
when a session has a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_its_figures(tiny_model_dir, tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- gpu-check:begin -->\nold\n<!-- gpu-check:end -->\n\nafter\n", encoding="utf-8")
    child = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--model",
                            str(tiny_model_dir), "--out", str(tmp_path / "out"), "--docs", str(docs)],
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stdout + child.stderr
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert result["dry_run"] and result["tests"]["returncode"] == 0 and "collected" in result["tests"]["summary"]
    assert result["step"]["returncode"] == 0 and set(result["step"]["steps_per_second"]) == {"peft", "no-cache", "cache"}
    assert [(r["K"], r["pack"]) for r in result["packed"]] == [(1, "on"), (2, "on"), (2, "off")]
    assert all(r["ok"] == r["cells"] for r in result["packed"]) and result["packed"][-1]["rows_equal"] is True
    text = docs.read_text()
    assert "old" not in text and text.endswith("<!-- gpu-check:end -->\n\nafter\n")
    assert "| 2 | on | 2/2 |" in text and "GPU check of" in text and "--dry-run" in text


def test_gpu_check_needs_a_gpu_without_dry_run():
    import torch

    if torch.cuda.is_available():
        return  # the real check runs here; nothing to refuse
    child = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == 2 and "no CUDA device here" in child.stderr
