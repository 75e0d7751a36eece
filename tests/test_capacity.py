"""Capacity search: doubling + bisection, and the command on a tiny model."""

from __future__ import annotations

import json

import pytest

from memlaw.capacity import search_sizes
from memlaw.data.information import PHONEBOOK_BITS
from memlaw.cli import main


@pytest.mark.parametrize("capacity", [0, 1, 2, 3, 5, 8, 13, 64, 100])
@pytest.mark.parametrize("start", [1, 4, 16])
def test_search_finds_the_largest_success(capacity, start):
    calls = []

    def probe(n):
        calls.append(n)
        return n <= capacity

    assert search_sizes(probe, start=start, limit=10_000) == capacity
    assert len(calls) == len(set(calls))  # no size is probed twice
    assert len(calls) <= 2 * (capacity.bit_length() + start.bit_length()) + 2


def test_search_stops_at_the_limit():
    assert search_sizes(lambda n: True, start=1, limit=50) == 32


def test_capacity_command_on_tiny_model(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "cap"
    rc = main(["capacity", "--model", str(tiny_model_dir), "--rank", "4", "--layer", "1", "--lr", "0.1",
               "--dropout", "0", "--batch-size", "4", "--max-steps", "100", "--limit", "16", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    s = json.loads((out / "capacity.json").read_text())
    assert text.count("probe ") == len(s["probes"]) >= 2
    ok = [p["records"] for p in s["probes"] if p["success"]]
    bad = [p["records"] for p in s["probes"] if not p["success"]]
    assert s["records"] == max(ok, default=0)
    assert all(b > s["records"] for b in bad)  # every failure is above the reported capacity
    if s["records"]:
        assert s["bits_per_param"] == pytest.approx(s["bits_memorized"] / s["trainable_params"])
        assert s["bits_memorized"] == pytest.approx(s["records"] * PHONEBOOK_BITS)  # every record recalled
        assert (out / f"n{s['records']}" / "metrics.json").is_file()
