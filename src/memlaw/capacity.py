"""Capacity search: the largest number of records a rank stores with every record certified.

Probes nested PhoneBook sets (record i is the same for every size), doubling until a probe
fails, then bisecting between the last success and the first failure. A probe succeeds when
certified stopping certifies every record within the step budget.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import TrainConfig
from .data.benchmarks import DataSpec, generate
from .errors import MemlawError
from .io import write_json, write_jsonl
from .train.trainer import train

BENCHMARKS = ("phonebook",)


@dataclass
class Probe:
    records: int
    success: bool
    answer_tokens: int
    certified_fraction: float
    steps: int
    bits_memorized: float  # the information of the records recalled exactly (memlaw.data.information)
    loss_bits: float  # the answer loss removed, in bits: an upper bound that also counts learning the format
    trainable_params: int
    seconds: float

    @property
    def bits_per_param(self) -> float:
        return self.bits_memorized / self.trainable_params


def search_sizes(probe: Callable[[int], bool], start: int = 1, limit: int = 100_000) -> int:
    """Largest n in [0, limit] with probe(n) true, assuming monotonicity: doubling, then bisection."""
    lo, hi, n = 0, None, max(1, start)
    while hi is None:  # doubling: find the first failure
        if n > limit:
            return lo
        if probe(n):
            lo, n = n, n * 2
        else:
            hi = n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return lo


def protocol(cfg: TrainConfig) -> dict:
    """The settings a capacity depends on (besides the rank): searches join into one law only if these agree."""
    keys = ("method", "lr", "dropout", "batch_size", "epochs", "max_steps", "a_init", "chat_template", "layer",
            "component")
    values = {k: getattr(cfg, k) for k in keys}
    budget = f"{cfg.max_steps} steps" if cfg.max_steps is not None else f"{cfg.epochs} epochs"
    values["text"] = (f"{cfg.method}, lr {cfg.lr:g}, dropout {cfg.dropout:g}, batch {cfg.batch_size}, every record "
                      f"certified within {budget}")
    return values


def capacity_search(
    base: TrainConfig,
    out: Path,
    benchmark: str = "phonebook",
    start: int = 1,
    limit: int = 100_000,
    on_probe: Callable[[Probe], None] | None = None,
) -> dict:
    """Run the search; every probe is a run folder `out/n<records>`; returns the summary (also capacity.json)."""
    if benchmark not in BENCHMARKS:
        raise MemlawError(f"capacity: unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}")
    probes: dict[int, Probe] = {}

    def probe(n: int) -> bool:
        rows, _ = generate(DataSpec(benchmark, records=n, seed=base.seed), base.model, base.trust_remote_code)
        data = out / f"n{n}" / "data.jsonl"
        write_jsonl(data, rows)
        cfg = dataclasses.replace(base, data=str(data), stop_when="certified").validate()
        m = train(cfg, out / f"n{n}", overwrite=True, progress=False)
        p = Probe(
            records=n,
            success=m.certified_fraction == 1.0,
            answer_tokens=m.target_tokens,
            certified_fraction=m.certified_fraction,
            steps=m.steps,
            bits_memorized=m.bits_memorized or 0.0,
            loss_bits=m.loss_bits,
            trainable_params=m.trainable_params,
            seconds=m.train_seconds,
        )
        probes[n] = p
        if on_probe is not None:
            on_probe(p)
        return p.success

    best = search_sizes(probe, start=start, limit=limit)
    summary = {
        "benchmark": benchmark,
        "model": base.model,
        "rank": base.rank,
        "method": base.method,
        "max_steps": base.max_steps,
        "protocol": protocol(base),
        "records": best,
        "probes": [dataclasses.asdict(p) | {"bits_per_param": p.bits_per_param} for p in sorted(probes.values(), key=lambda p: p.records)],
    }
    if best:
        p = probes[best]
        summary.update(
            answer_tokens=p.answer_tokens,
            bits_memorized=p.bits_memorized,
            loss_bits=p.loss_bits,
            trainable_params=p.trainable_params,
            bits_per_param=p.bits_per_param,
        )
    else:
        summary.update(answer_tokens=0, bits_memorized=0.0, loss_bits=0.0, trainable_params=None, bits_per_param=0.0)
    write_json(out / "capacity.json", summary)
    return summary
