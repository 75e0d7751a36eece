"""--dtype auto on the CPU (flag + cached micro-benchmark), and bfloat16 training with its certificate."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from conftest import write_records
from memlaw.cli import main
from memlaw.model import loading

CPU = torch.device("cpu")


@pytest.fixture
def cpu_rule(monkeypatch, tmp_path):
    """The CPU rule with its inputs under the test's control: no env override, a fresh cache, a CPU
    flag and a micro-benchmark result to set, and a count of benchmark runs."""
    monkeypatch.delenv(loading.CPU_BF16_ENV, raising=False)
    monkeypatch.setenv("MEMLAW_CACHE", str(tmp_path / "cache"))
    state = {"flag": "avx512_bf16", "speedup": 2.0, "runs": 0}

    def bench(reps: int = 20) -> float:
        state["runs"] += 1
        return state["speedup"]

    monkeypatch.setattr(loading, "cpu_bf16_flag", lambda: state["flag"])
    monkeypatch.setattr(loading, "bf16_matmul_speedup", bench)
    return state


def test_auto_is_bfloat16_where_bf16_is_measured_faster(cpu_rule):
    dtype, reason = loading.choose_dtype("auto", CPU)
    assert dtype == torch.bfloat16
    assert reason.startswith("auto: this CPU has avx512_bf16") and "2.00x float32's speed (faster" in reason


def test_auto_is_float32_where_the_flag_lies(cpu_rule):
    cpu_rule["speedup"] = 0.6  # a native-bf16 CPU whose bf16 products are slower (measured on such a machine)
    dtype, reason = loading.choose_dtype("auto", CPU)
    assert dtype == torch.float32 and "0.60x" in reason and "not 1.3x faster" in reason


def test_auto_is_float32_without_the_flag_and_runs_no_benchmark(cpu_rule):
    cpu_rule["flag"] = None
    dtype, reason = loading.choose_dtype("auto", CPU)
    assert dtype == torch.float32 and "no native bf16" in reason and cpu_rule["runs"] == 0


def test_benchmark_runs_once_per_machine_and_is_cached(cpu_rule, tmp_path):
    assert loading.choose_dtype("auto", CPU)[0] == torch.bfloat16
    cpu_rule["speedup"] = 0.5  # a second measurement would now say float32; the cache answers instead
    assert loading.choose_dtype("auto", CPU)[0] == torch.bfloat16 and cpu_rule["runs"] == 1
    cache = json.loads((tmp_path / "cache" / loading.CPU_DTYPE_FILE).read_text())
    assert [e["speedup"] for e in cache.values()] == [2.0]
    (tmp_path / "cache" / loading.CPU_DTYPE_FILE).write_text("{damaged")  # a damaged cache is measured again
    assert loading.choose_dtype("auto", CPU)[0] == torch.float32 and cpu_rule["runs"] == 2


def test_env_override_and_explicit_dtypes(cpu_rule, monkeypatch):
    monkeypatch.setenv(loading.CPU_BF16_ENV, "0")
    assert loading.choose_dtype("auto", CPU) == (torch.float32, "auto: MEMLAW_CPU_BF16=0")
    assert loading.choose_dtype("bfloat16", CPU) == (torch.bfloat16, "given (--dtype)")
    assert loading.choose_dtype("auto", torch.device("cuda")) == (torch.bfloat16, "auto: CUDA device")
    assert cpu_rule["runs"] == 0


def test_real_micro_benchmark_gives_a_positive_ratio():
    # No lower bound beyond 0: without bf16 instructions (an AVX2-only CPU) bf16 products are emulated
    # and run 55-75x slower than float32 (0.013-0.018 on an AMD EPYC, docs/benchmarks.md): a valid answer.
    ratio = loading.bf16_matmul_speedup(reps=1)
    assert math.isfinite(ratio) and 0 < ratio < 50


def test_config_records_dtype_and_reason_and_says_it_once(cpu_rule, tiny_model_dir, small_records, tmp_path, capsys):
    args = ["--model", str(tiny_model_dir), "--data", str(small_records), "--layer", "1", "--rank", "2", "--epochs", "1",
            "--batch-size", "4", "--quiet"]
    loading._said.clear()
    for name in ("a", "b"):
        assert main(["train", *args, "--out", str(tmp_path / name)]) == 0
    cfg = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert cfg["dtype"] == "bfloat16" and cfg["dtype-reason"].startswith("auto: this CPU has avx512_bf16")
    assert capsys.readouterr().err.count("memlaw: dtype bfloat16, auto:") == 1  # one line per process
    assert main(["train", *args, "--out", str(tmp_path / "c"), "--dtype", "float32"]) == 0
    cfg = yaml.safe_load((tmp_path / "c" / "config.yaml").read_text())
    assert cfg["dtype"] == "float32" and cfg["dtype-reason"] == "given (--dtype)"
    # the saved config replays (the reason is recorded, not a flag), and a new --dtype drops the old reason
    assert main(["train", "--config", str(tmp_path / "a" / "config.yaml"), "--out", str(tmp_path / "d"), "--quiet",
                 "--dtype", "float32"]) == 0
    assert yaml.safe_load((tmp_path / "d" / "config.yaml").read_text())["dtype-reason"] == "given (--dtype)"
    with pytest.raises(SystemExit):
        main(["train", *args, "--out", str(tmp_path / "e"), "--dtype-reason", "x"])


# ---------------------------------------------------------------------- bfloat16 training
def train_steps(model_dir, data, out, dtype: str, steps: int = 5) -> dict:
    assert main(["train", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--quiet", "--layer", "1",
                 "--rank", "4", "--lr", "0.05", "--dropout", "0", "--batch-size", "4", "--epochs", str(steps),
                 "--dtype", dtype]) == 0
    with open(out / "train_log.csv") as f:
        return {"losses": [float(line.split(",")[2]) for line in f.read().splitlines()[1:]]}


def test_bfloat16_steps_track_float32(tiny_model_dir, small_records, tmp_path):
    """A few training steps in bf16 follow float32's loss curve within bf16's rounding (about 3
    significant digits per product): every step's loss within 2 %, the unit itself float32."""
    f32 = train_steps(tiny_model_dir, small_records, tmp_path / "f32", "float32")["losses"]
    bf16 = train_steps(tiny_model_dir, small_records, tmp_path / "bf16", "bfloat16")["losses"]
    assert len(f32) == len(bf16) == 5 and f32[-1] < f32[0]
    for a, b in zip(f32, bf16):
        assert b == pytest.approx(a, rel=0.02)
    assert f32 != bf16  # the dtypes did differ
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(tmp_path / "bf16" / "adapter.safetensors")).values()} == {torch.float32}


def test_bfloat16_certificate_holds_in_bfloat16_and_float32(tiny_model_dir, tmp_path):
    """Certified in bf16 => greedy decoding reproduces the record, in bf16 and with the base in float32."""
    data = write_records(tmp_path / "r.jsonl", [{"query": "Ann Lee:", "target": "4821"},
                                                {"query": "Bob Ray:", "target": "90"},
                                                {"query": "Cy Wu:", "target": "377"}])
    run = tmp_path / "run"
    assert main(["memorize", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(run), "--layer", "1",
                 "--rank", "4", "--lr", "0.1", "--dtype", "bfloat16", "--batch-size", "3"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["certified_fraction"] == 1.0 and m["certificate_violations"] == 0 and m["exact_match"] == 1.0
    assert main(["eval", str(run), "--dtype", "float32", "--no-locality"]) == 0
    f32 = json.loads((run / "eval-float32" / "metrics.json").read_text())
    assert f32["certificate_violations"] == 0 and f32["exact_match"] == 1.0
    assert yaml.safe_load((run / "eval-float32" / "config.yaml").read_text())["dtype"] == "float32"
    assert json.loads((run / "metrics.json").read_text()) == m  # the run's own results are untouched
