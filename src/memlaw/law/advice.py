"""A rank for your own data: `memlaw plan --data FILE` and `memlaw memorize --rank auto`.

The data are measured as training would measure them: the records are encoded with the
model's tokenizer and the run's prompt construction, the answer tokens counted (the law's
length ℓ, what a sweep's `length` counts), the base model's teacher-forced loss on them taken
(the initial loss) and their information counted (memlaw.data.information: exact for generated
benchmarks and declared ``info_bits``, else the base model's loss in bits, an upper bound). Then:

* for the default model, with no ``--law``: the capacity law shipped with memlaw
  (memlaw.law.capacity; `memlaw capacity` searches under the probe's protocol, ranks 1-2 today): the
  smallest power-of-two rank that certifies the file's bits. It counts information, so it
  answers for any file, not only for files that look like the benchmark it was measured on;
* with ``--law LAW`` (a ΔL law from `memlaw fit`): the smallest power-of-two rank at which the
  law predicts ΔL ≥ 95 % of the initial loss at ℓ, a stand-in for "every record stored" (a ΔL
  law cannot tell recall; law.json's group names the protocol it describes);
* otherwise, or where the capacity law would extrapolate beyond twice its largest measured rank:
  a quick probe, memorizing the file at ranks 1, 2, 4, … with `memlaw memorize`'s settings and a
  budget of 300 epochs, until every record is certified.

A capacity table measured with `memlaw capacity` (shipped for the default model) adds a warning
when the file holds more records than the chosen rank held in that search.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import MemlawError
from .groups import SATURATION_MARGIN

PROBE_RANKS = (1, 2, 4, 8, 16, 32, 64, 128)
PROBE_EPOCHS = 300  # a probe's budget: epochs, so a file of more records than one batch gets as many passes
DEFAULT_MODEL_CAPACITY = "smollm2-135m-capacity.json"  # memlaw/law/defaults/: `memlaw capacity` results


@dataclass
class DataSummary:
    path: str
    model: str
    records: int
    answer_tokens: int  # what the law's length counts
    trained_tokens: int  # answer tokens + each record's end-of-turn suffix (what the reported losses average over)
    initial_loss: float  # base model, nats per trained token (the reported initial loss)
    information_bits: float = float("nan")  # the records' information (memlaw.data.information)
    information_source: str = ""

    @property
    def target_delta_loss(self) -> float:
        """The ΔL a ΔL law is asked for: 95 % of the initial loss, its stand-in for "every record stored"."""
        return (1.0 - SATURATION_MARGIN) * self.initial_loss


@dataclass
class Advice:
    rank: int
    source: str  # "law" | "capacity" | "probe"
    reason: str
    warning: str | None = None


def summarize_data(path: str | Path, model: str = "default", chat_template: bool = True, device: str = "auto",
                   dtype: str = "auto", trust_remote_code: bool = False) -> DataSummary:
    """Count the file's answer tokens with the model's tokenizer and measure the base model's loss on it."""
    from ..data.encoding import encode_records
    from ..data.records import load_records
    from ..evaluate.recall import teacher_forced
    from ..model.forward import AnswerForward
    from ..data.information import record_information
    from ..model.loading import load_model

    loaded = load_model(model, device, dtype, trust_remote_code)
    records = load_records(path, loaded.tokenizer)
    encoded = encode_records(loaded.tokenizer, records, chat_template)
    stats = teacher_forced(AnswerForward(loaded.model, encoded, int(loaded.tokenizer.pad_token_id), loaded.device), 32)
    trained = sum(len(e.target_ids) for e in encoded)
    info = record_information(records, [s.answer_losses for s in stats])
    return DataSummary(str(path), model, len(records), sum(e.answer_len for e in encoded), trained,
                       sum(float(s.losses.sum()) for s in stats) / trained, info.total, info.source)


def default_file(name: str) -> Path | None:
    path = resources.files("memlaw.law").joinpath("defaults", name)
    return Path(str(path)) if path.is_file() else None


def law_advice(summary: DataSummary, law_path: str | Path, group: str | None = None, form: str | None = None) -> Advice:
    """The smallest power-of-two rank at which the law predicts everything stored (see the module docstring)."""
    from .lawfile import default_group, group_law, pick_group, read_law

    law = read_law(law_path)
    label, entry = default_group(law, law_path) if group is None else pick_group(law, group, law_path)
    fitted = group_law(entry, form)
    target = summary.target_delta_loss
    try:
        plan = fitted.rank_for(summary.answer_tokens, target)
    except MemlawError as e:
        raise MemlawError(f"{law_path}: {e}") from None
    if not math.isfinite(plan.rank):
        raise MemlawError(f"{law_path} ({label}, {fitted.form} form): no rank reaches ΔL {target:.3f} at "
                          f"{summary.answer_tokens} answer tokens (the law's ceiling is below it); split the file")
    reason = (f"the law {Path(law_path).name} ({label}, {fitted.form} form, R² {fitted.r2_:.3f}) predicts ΔL ≥ {target:.3f} "
              f"(95% of the initial loss {summary.initial_loss:.3f}, its stand-in for every record stored) at "
              f"{summary.answer_tokens} answer tokens from rank {plan.rank:.3g}")
    outside = []
    for name, value, seen in (("rank", plan.power_of_two, entry.get("ranks")), ("length", summary.answer_tokens, entry.get("lengths"))):
        if seen and not min(seen) <= value <= max(seen):
            outside.append(f"{name} {value:g} is outside the fitted {min(seen):g}–{max(seen):g}")
    if outside:
        reason += f" ({'; '.join(outside)}: an extrapolation)"
    return Advice(max(1, plan.power_of_two), "law", reason)


def probe_advice(path: str | Path, model: str = "default", max_steps: int | None = None, ranks=PROBE_RANKS,
                 progress=None, epochs: int = PROBE_EPOCHS, **config: Any) -> Advice:
    """Memorize the file at ranks 1, 2, 4, … (memorize's settings, `epochs` passes, at most `max_steps` steps if
    given) until all are certified. The budget is in epochs, not steps: with a step budget a file of 17 records
    (two batches of 16) would get half the passes of one of 16, and the probe would measure the batch split."""
    from ..config import MEMORIZE_DEFAULTS, TrainConfig, replace
    from ..model.loading import load_model
    from ..train.trainer import train

    cfg = TrainConfig(**{**MEMORIZE_DEFAULTS, "model": model, **config, "data": str(path), "epochs": epochs,
                         "max_steps": max_steps}).validate()
    budget = f"{epochs} epochs" + (f" and {max_steps} steps" if max_steps else "")
    loaded = load_model(cfg.model, cfg.device, cfg.dtype, cfg.trust_remote_code)
    tried = []
    with tempfile.TemporaryDirectory(prefix="memlaw-probe-") as tmp:
        for rank in ranks:
            metrics = train(replace(cfg, rank=rank).validate(), Path(tmp) / f"r{rank}",
                            loaded=loaded, progress=False)
            tried.append(f"r{rank} {metrics.certified_fraction:.0%}")
            if progress is not None:
                progress(rank, metrics)
            if metrics.certified_fraction == 1.0:
                return Advice(rank, "probe", f"a probe certified every record at rank {rank} within "
                              f"{metrics.steps_to_certified} steps of a {budget} budget (certified: {', '.join(tried)})")
    raise MemlawError(f"{path}: no rank up to {ranks[-1]} certified every record within {budget} "
                      f"({', '.join(tried)}); give --rank and a larger --max-steps")


def capacity_warning(summary: DataSummary, rank: int, table: str | Path | None) -> str | None:
    """A warning if the file holds more records than `rank` held in a `memlaw capacity` search (if measured)."""
    if table is None:
        return None
    values = json.loads(Path(table).read_text(encoding="utf-8"))
    held = values.get("ranks", {}).get(str(rank))
    if held is None or summary.records <= held["records"]:
        return None
    protocol = values.get("protocol", "see docs/benchmarks.md")
    protocol = protocol.get("text", protocol) if isinstance(protocol, dict) else protocol
    return (f"{summary.records} records exceed the {held['records']} that rank {rank} held in `memlaw capacity` "
            f"({protocol}); expect to need more steps or a larger rank")


def capacity_advice(summary: DataSummary, path: str | Path) -> Advice:
    """The smallest power-of-two rank whose measured capacity (memlaw.law.capacity) holds the file's bits."""
    from .capacity import rank_for_bits, read_capacity

    rank, reason = rank_for_bits(read_capacity(path), summary.information_bits, str(path))
    return Advice(rank, "capacity", f"{reason}, the file's information ({summary.information_source})")


def advise(summary: DataSummary, law: str | Path | None = None, group: str | None = None, form: str | None = None,
           probe: dict | None = None, method: str | None = None, note=None) -> Advice:
    """The rank for this data: from `law` (a ΔL law), else for the default model from its shipped capacity
    law, else from a probe.

    With `law` and no `group`, the law's group for `method` (the method that will train) if it has one,
    else its combined law; a law the user chose that cannot answer is an error. Where the shipped
    capacity law cannot answer (it would extrapolate too far), the probe answers instead, and `note`
    (a callable, if given) hears why first."""
    default_model = summary.model == "default"
    advice = None
    if law is not None:
        if group is None and method is not None:
            from .lawfile import pick_group, read_law

            try:
                pick_group(read_law(law), f"method={method}", law)
                group = f"method={method}"
            except MemlawError:
                pass  # no group of its own: the combined law
        advice = law_advice(summary, law, group, form)
    elif default_model and (capacity := default_file(DEFAULT_MODEL_CAPACITY)) is not None:
        try:
            advice = capacity_advice(summary, capacity)
        except MemlawError as e:
            if note is not None:
                note(f"the shipped capacity law ({DEFAULT_MODEL_CAPACITY}) cannot answer for this file: "
                     f"{str(e).split(': ', 1)[-1]}; probing instead")
    if advice is None:
        advice = probe_advice(summary.path, summary.model, **(probe or {}))
    advice.warning = capacity_warning(summary, advice.rank, default_file(DEFAULT_MODEL_CAPACITY) if default_model else None)
    return advice
