"""Sweeps as on a real cluster (issue 15): nodes without a shared filesystem, workers that die, two writers.

The cluster is Ray's in-process test cluster (`ray.cluster_utils.Cluster`): a head node and a
second node, one CPU each, so the two workers run on different nodes. Worker processes get test
hooks through Ray's runtime_env (tests/cluster_hooks.py): one makes the driver's --out unwritable
for them, one kills a worker in the middle of a cell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import yaml

from memlaw.cli import main
from memlaw.lock import LOCK_FILE
from memlaw.sweep import parse_grid, run_sweep
from memlaw.sweep.worker import CellWorker
from test_sweep import tiny_grid, without_timing

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


@pytest.fixture(scope="module")
def grid(tiny_model_dir):
    return parse_grid(tiny_grid(tiny_model_dir), "grid.yaml")


@pytest.fixture(scope="module")
def local(grid, tmp_path_factory):
    """The grid run by the local engine with its model loaded once (the reference table)."""
    return run_sweep(grid, tmp_path_factory.mktemp("local") / "sweep", progress=False)


@pytest.fixture(scope="module")
def cluster():
    """Two nodes of one CPU each; each test connects its own job (with its own worker hooks)."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


def connect(cluster, hook: str, **env: str) -> None:
    ray.shutdown()
    path = os.pathsep.join([str(TESTS), str(SRC), os.environ.get("PYTHONPATH", "")])
    ray.init(address=cluster.address, log_to_driver=False, runtime_env={
        "env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1", **env},
        "worker_process_setup_hook": f"cluster_hooks.{hook}",
    })


def test_model_reuse_gives_the_same_rows(grid, local, tmp_path):
    """The local engine's worker loads the model once; loading it for every cell gives identical rows."""
    fresh = run_sweep(grid, tmp_path / "fresh", progress=False, reuse_model=False)
    pd.testing.assert_frame_equal(without_timing(fresh), without_timing(local))
    worker = CellWorker(scratch_root=tmp_path / "scratch")
    for cell in grid.cells():
        assert worker.run(grid, cell, {}, str(tmp_path / "data")).status == "ok"
    assert worker.models_loaded == 1


def test_lora_model_reuse_gives_the_same_rows(tiny_model_dir, tmp_path):
    grid = parse_grid(tiny_grid(tiny_model_dir, ranks=[2], train={
        "lr": 0.1, "epochs": 2, "batch_size": 4, "dropout": 0.0, "device": "cpu", "component": "lora",
        "target_modules": ["q_proj", "down_proj"]}), "grid.yaml")
    reused = run_sweep(grid, tmp_path / "reused", progress=False)
    fresh = run_sweep(grid, tmp_path / "fresh", progress=False, reuse_model=False)
    pd.testing.assert_frame_equal(without_timing(reused), without_timing(fresh))


def test_cells_travel_back_from_nodes_that_cannot_write_the_driver_folder(grid, local, cluster, tmp_path):
    out, markers = tmp_path / "driver", tmp_path / "markers"
    out.mkdir()
    markers.mkdir()
    connect(cluster, "forbid_writes", MEMLAW_TEST_READONLY=str(out), MEMLAW_TEST_MARKERS=str(markers))
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    frame = run_sweep(grid, out, engine="ray", workers=2, progress=False)
    assert len(list(markers.glob("guard-*"))) >= 2  # both workers ran with the driver's folder unwritable
    # Ray's workers use one thread, the local run two: float sums may round differently
    pd.testing.assert_frame_equal(without_timing(frame), without_timing(local), check_exact=False, rtol=1e-5, atol=1e-6)
    assert frame["cell"].is_unique and len(frame) == 4 and frame["status"].eq("ok").all()
    for name in frame["cell"]:  # complete cell folders, naming the driver's data file
        config = yaml.safe_load((out / "cells" / name / "config.yaml").read_text(encoding="utf-8"))
        assert Path(config["data"]).parent == out / "data" and Path(config["data"]).is_file()
        assert (out / "cells" / name / "adapter.safetensors").is_file()
    assert sorted(p.name for p in (out / "cells").iterdir()) == sorted(frame["cell"])  # no half-published leftovers


def test_workers_killed_mid_cell(grid, local, cluster, tmp_path):
    """One cell's worker is killed once: the cell is retried on a new worker and done once. Another's is killed
    every time: failed with the reason after 1 + retries attempts. Never a duplicate row."""
    retried, lost = grid.cells()[1].name, grid.cells()[2].name
    out, markers = tmp_path / "sweep", tmp_path / "markers"
    markers.mkdir()
    connect(cluster, "crash_in_cell", MEMLAW_TEST_CRASH=f"{retried}:1,{lost}:9", MEMLAW_TEST_MARKERS=str(markers))
    frame = run_sweep(grid, out, engine="ray", workers=2, max_retries=1, progress=False)
    assert len(list(markers.glob(f"crash-{retried}-*"))) == 1 and len(list(markers.glob(f"crash-{lost}-*"))) == 2
    assert frame["cell"].tolist() == [c.name for c in grid.cells()] and frame["cell"].is_unique
    rows = frame.set_index("cell")
    assert rows.loc[lost, "status"] == "failed" and (frame["status"] == "ok").sum() == 3
    ok = frame["cell"] != lost
    pd.testing.assert_frame_equal(without_timing(frame[ok]), without_timing(local[ok]), check_exact=False, rtol=1e-5, atol=1e-6)
    assert "the worker died 2 time(s) running this cell" in rows.loc[lost, "error"]
    assert pd.isna(rows.loc[lost, "exact_match"])
    error = json.loads((out / "cells" / lost / "error.json").read_text(encoding="utf-8"))
    assert "died" in error["message"]


# ---------------------------------------------------------------------- one writer per folder
def wait_for_holder(folder: Path, proc: subprocess.Popen, timeout: float = 120) -> dict:
    """Wait until `proc` holds `folder`'s lock (its holder record is written); return the record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the first command ended before the second could start"
        try:
            text = (folder / LOCK_FILE).read_text(encoding="utf-8").strip()
            if text:
                return json.loads(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise AssertionError("the first command never took the lock")


@contextmanager
def holding(argv: list[str], folder: Path):
    """Start `memlaw ARGV` in a subprocess; yield it with the lock holder it wrote into `folder`; kill it at the end."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "memlaw.cli", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        yield proc, wait_for_holder(folder, proc)
    finally:
        proc.kill()
        proc.wait()


def long_train_argv(model: Path, records: Path, out: Path) -> list[str]:
    """A `memlaw train` long enough on the tiny model to be caught holding its folder's lock."""
    return ["train", "--data", str(records), "--out", str(out), "--model", str(model), "--layer", "1", "--rank", "2",
            "--epochs", "300", "--lr", "0.01", "--device", "cpu", "--quiet"]


def test_two_sweeps_on_one_folder(tiny_model_dir, small_records, tmp_path, capsys):
    grid_path = tmp_path / "grid.yaml"
    grid_path.write_text(yaml.safe_dump(tiny_grid(tiny_model_dir, ranks=[1, 2], lengths=[20, 30, 40], train={
        "lr": 0.1, "epochs": 10, "batch_size": 2, "dropout": 0.0})), encoding="utf-8")
    out = tmp_path / "sweep"
    with holding(["sweep", str(grid_path), "--out", str(out)], out) as (first, holder):
        assert holder["pid"] == first.pid and "sweep" in holder["command"]
        assert main(["sweep", str(grid_path), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{out} is in use by pid {first.pid} on " in err[0] and "Traceback" not in err[0]
        # a train into the sweep's folder is a second writer too
        assert main(["train", "--data", str(small_records), "--out", str(out), "--model", str(tiny_model_dir)]) == 2
        assert f"{out} is in use by pid {first.pid}" in capsys.readouterr().err
        assert first.wait(timeout=300) == 0, first.stderr.read()
    frame = pd.read_parquet(out / "results.parquet")
    assert len(frame) == 6 and frame["cell"].is_unique and frame["status"].eq("ok").all()
    assert main(["sweep", str(grid_path), "--out", str(out)]) == 0  # free again: resumes, nothing to run
    assert (out / LOCK_FILE).read_text(encoding="utf-8") == ""


def test_two_trains_on_one_folder(tiny_model_dir, small_records, tmp_path, capsys):
    out = tmp_path / "run"
    argv = long_train_argv(tiny_model_dir, small_records, out)
    with holding(argv, out) as (first, holder):
        assert holder["pid"] == first.pid
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{out} is in use by pid {first.pid} on " in err[0]
        assert first.wait(timeout=300) == 0, first.stderr.read()
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["steps"] > 0
    assert main(argv) == 0  # the same finished run again: the folder is free


def test_a_lock_left_by_a_killed_process_is_taken_over(tiny_model_dir, small_records, tmp_path, capsys):
    """kill -9 while holding the lock: the kernel released it; the next command notes the dead holder and goes on."""
    import signal

    out = tmp_path / "run"
    argv = long_train_argv(tiny_model_dir, small_records, out)
    with holding(argv, out) as (first, holder):
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"was left locked by pid {holder['pid']} on {holder['host']}" in err and "no longer running; taking over" in err
    assert (out / LOCK_FILE).read_text(encoding="utf-8") == ""
