"""The capacity law: how many bits of records a rank certifies, K(r) = k·r^a, and the rank a file needs.

`memlaw plan --data FILE` must answer for files that are not PhoneBook: keys, product codes,
facts. The paper's law describes ΔL in nats of one benchmark's loss, whose ceiling (the initial
loss) and format share differ from file to file, so it does not carry over (the shipped
PhoneBook law cannot even express "every record stored" for a file whose initial loss is above
its ceiling). Information does carry over: a rank certifies about as many *bits* of records
whatever they look like. So the law shipped for `plan` is fitted to `memlaw capacity`
measurements (the most PhoneBook records a rank certifies within the probe's budget of 300 epochs, times
31.9 bits per record) and is read against the file's information (memlaw.data.information: exact
for generated benchmarks and declared ``info_bits``, else the base model's loss in bits, an upper
bound, so the plan errs towards a larger rank).

The fit is least squares in log-log space; ``heldout`` refits without the largest rank and
reports its error there: how far `plan` may be trusted one doubling beyond the measurements.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import MemlawError
from ..io import write_json
from ..io import read_json_object

FORMULA = "K(r) = k·r^a (bits of records certified at rank r)"
EXTRAPOLATION = 2.0  # plan answers up to this factor beyond the largest measured rank; beyond, it probes


@dataclass
class CapacityLaw:
    k: float
    a: float
    ranks: list[float] = field(default_factory=list)
    bits: list[float] = field(default_factory=list)
    heldout: dict[str, float] | None = None

    @classmethod
    def fit(cls, ranks: Sequence[float], bits: Sequence[float], holdout: bool = True) -> CapacityLaw:
        r, b = np.asarray(ranks, dtype=float), np.asarray(bits, dtype=float)
        if len(r) < 2 or len(set(r.tolist())) < 2:
            raise MemlawError(f"a capacity law needs measurements at two ranks or more, got ranks {sorted(set(r.tolist()))}")
        if (r <= 0).any() or (b <= 0).any():
            raise MemlawError("a capacity law needs positive ranks and bits (a rank that certified nothing cannot be fitted)")
        a, log_k = np.polyfit(np.log(r), np.log(b), 1)
        law = cls(float(math.exp(log_k)), float(a), r.tolist(), b.tolist())
        if holdout and len(set(r.tolist())) >= 3:
            top = r == r.max()
            rest = cls.fit(r[~top], b[~top], holdout=False)
            predicted = rest.bits_at(float(r.max()))
            measured = float(b[top].mean())
            law.heldout = {"rank": float(r.max()), "predicted_bits": predicted, "measured_bits": measured,
                           "error": predicted / measured - 1.0}
        return law

    def bits_at(self, rank: float) -> float:
        return self.k * rank ** self.a

    def rank_for(self, bits: float) -> float:
        """The (real) rank at which the law holds `bits`."""
        if bits <= 0:
            return 0.0
        return (bits / self.k) ** (1.0 / self.a)

    def to_dict(self) -> dict[str, Any]:
        return {"formula": FORMULA, "k": self.k, "a": self.a, "ranks": self.ranks, "bits": self.bits,
                "heldout": self.heldout}

    @classmethod
    def from_dict(cls, values: Any, where: str) -> CapacityLaw:
        try:
            law = cls(float(values["k"]), float(values["a"]), [float(v) for v in values.get("ranks", [])],
                      [float(v) for v in values.get("bits", [])], values.get("heldout"))
        except (TypeError, KeyError, ValueError) as e:
            raise MemlawError(f"{where}: damaged capacity law ({e})") from None
        if not (law.k > 0 and law.a > 0):
            raise MemlawError(f"{where}: damaged capacity law (k {law.k}, a {law.a}: both must be > 0)")
        return law


def read_capacity(path: str | Path) -> dict:
    """A capacity file (memlaw/law/defaults/*-capacity.json or `memlaw capacity --fit`'s output)."""
    values = read_json_object(Path(path))
    if not isinstance(values.get("ranks"), dict):
        raise MemlawError(f"{path}: not a capacity file (no 'ranks')")
    return values


def fit_capacity_files(paths: Sequence[str | Path], out: str | Path) -> dict:
    """Join `memlaw capacity` results (each folder's capacity.json, one rank each) into one capacity file with
    its law; the protocol must be the same in every one."""
    runs = []
    for p in map(Path, paths):
        file = p / "capacity.json" if p.is_dir() else p
        runs.append((file, read_capacity_run(file)))
    protocols = {json.dumps(run["protocol"], sort_keys=True) for _, run in runs}
    if len(protocols) > 1:
        raise MemlawError("capacity --fit: the searches used different settings: "
                          + "; ".join(f"{f}: {run['protocol']}" for f, run in runs))
    ranks = {}
    for file, run in sorted(runs, key=lambda fr: fr[1]["rank"]):
        if str(run["rank"]) in ranks:
            raise MemlawError(f"capacity --fit: rank {run['rank']} given twice ({file})")
        ranks[str(run["rank"])] = {k: run[k] for k in ("records", "answer_tokens", "bits_memorized", "trainable_params",
                                                        "bits_per_param")}
    usable = {int(r): v["bits_memorized"] for r, v in ranks.items() if v["records"] > 0}
    law = CapacityLaw.fit(list(usable), list(usable.values()))
    result = {"model": runs[0][1]["model"], "benchmark": runs[0][1]["benchmark"], "protocol": runs[0][1]["protocol"],
              "ranks": ranks, "law": law.to_dict()}
    write_json(out, result)
    return result


def read_capacity_run(path: Path) -> dict:
    """One `memlaw capacity` search's capacity.json, with the protocol it ran under."""
    run = read_json_object(path)
    missing = [k for k in ("rank", "records", "bits_memorized", "protocol") if k not in run]
    if missing:
        raise MemlawError(f"capacity --fit: {path} lacks {', '.join(missing)} (written by an older memlaw? run the search again)")
    return run


def rank_for_bits(capacity: dict, bits: float, where: str) -> tuple[int, str]:
    """The smallest power-of-two rank whose capacity holds `bits`, and why; MemlawError where the law would
    extrapolate beyond EXTRAPOLATION x its largest measured rank."""
    from .fit import next_power_of_two

    if "law" not in capacity:
        raise MemlawError(f"{where}: no capacity law in it (`memlaw capacity --fit` writes one)")
    law = CapacityLaw.from_dict(capacity["law"], where)
    rank = law.rank_for(bits)
    top = max(law.ranks) if law.ranks else 1.0
    if rank > EXTRAPOLATION * top:
        raise MemlawError(f"{bits:.0f} bits need rank {rank:.3g} by the capacity law, beyond {EXTRAPOLATION:g}x its "
                          f"largest measured rank {top:g}")
    chosen = max(1, next_power_of_two(rank))
    held = law.heldout
    trust = (f"; refitted without rank {held['rank']:g} it missed that rank's capacity by {held['error']:+.0%}"
             if held else "")
    return chosen, (f"the capacity law {Path(where).name} (K(r) = {law.k:.4g}·r^{law.a:.3f} bits certified, "
                    f"{capacity.get('protocol', {}).get('text', 'see the file')}{trust}) holds {bits:.0f} bits from "
                    f"rank {rank:.3g}")
