"""A rank for your own data: `memlaw plan --data FILE` and `memlaw memorize --rank auto`.

The data are measured as training would measure them: the records are encoded with the
model's tokenizer and the run's prompt construction, and the answer tokens counted (the law's
length ℓ, what a sweep's `length` counts); the base model's teacher-forced loss on them is the
initial loss. "Everything stored" is what `memlaw fit --exclude-saturated` calls a full cell: a
loss reduction of at least (1 − 0.05) of the initial loss. Then:

* with a fitted law (``--law``, or the law shipped for the default model from the committed study,
  results/smollm2-135m): the smallest power-of-two rank at which the law predicts that ΔL at ℓ;
  the law describes the protocol of the sweep it was fitted on, which the report names;
* without one: a quick probe, memorizing the file at ranks 1, 2, 4, … with `memlaw memorize`'s
  settings and a small step budget, until every record is certified.

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
PROBE_STEPS = 300
DEFAULT_MODEL_LAW = "smollm2-135m-law.json"  # memlaw/law/defaults/: the study's law, for model "default"
DEFAULT_MODEL_CAPACITY = "smollm2-135m-capacity.json"  # memlaw/law/defaults/: `memlaw capacity` results


@dataclass
class DataSummary:
    path: str
    model: str
    records: int
    answer_tokens: int  # what the law's length counts
    trained_tokens: int  # answer tokens + each record's end-of-turn suffix (what the reported losses average over)
    initial_loss: float  # base model, nats per trained token (the reported initial loss)

    @property
    def target_delta_loss(self) -> float:
        """ΔL of a cell with everything stored (memlaw fit's 'full' saturation rule)."""
        return (1.0 - SATURATION_MARGIN) * self.initial_loss


@dataclass
class Advice:
    rank: int
    source: str  # "law" | "probe"
    reason: str
    warning: str | None = None


def summarize_data(path: str | Path, model: str = "default", chat_template: bool = True, device: str = "auto",
                   dtype: str = "auto", trust_remote_code: bool = False) -> DataSummary:
    """Count the file's answer tokens with the model's tokenizer and measure the base model's loss on it."""
    from ..data.encoding import encode_records
    from ..data.records import load_records
    from ..evaluate.recall import teacher_forced
    from ..model.forward import AnswerForward
    from ..model.loading import load_model

    loaded = load_model(model, device, dtype, trust_remote_code)
    records = load_records(path, loaded.tokenizer)
    encoded = encode_records(loaded.tokenizer, records, chat_template)
    stats = teacher_forced(AnswerForward(loaded.model, encoded, int(loaded.tokenizer.pad_token_id), loaded.device), 32)
    trained = sum(len(e.target_ids) for e in encoded)
    return DataSummary(str(path), model, len(records), sum(e.answer_len for e in encoded), trained,
                       sum(float(s.losses.sum()) for s in stats) / trained)


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
              f"(95% of the initial loss {summary.initial_loss:.3f}: every record stored) at {summary.answer_tokens} "
              f"answer tokens from rank {plan.rank:.3g}")
    outside = []
    for name, value, seen in (("rank", plan.power_of_two, entry.get("ranks")), ("length", summary.answer_tokens, entry.get("lengths"))):
        if seen and not min(seen) <= value <= max(seen):
            outside.append(f"{name} {value:g} is outside the fitted {min(seen):g}–{max(seen):g}")
    if outside:
        reason += f" ({'; '.join(outside)}: an extrapolation)"
    return Advice(max(1, plan.power_of_two), "law", reason)


def probe_advice(path: str | Path, model: str = "default", max_steps: int = PROBE_STEPS, ranks=PROBE_RANKS,
                 progress=None, **config: Any) -> Advice:
    """Memorize the file at ranks 1, 2, 4, … (memorize's settings, `max_steps` budget) until all are certified."""
    from ..config import TrainConfig, replace
    from ..memory import MEMORIZE_DEFAULTS
    from ..model.loading import load_model
    from ..train.trainer import train

    cfg = TrainConfig(**{**MEMORIZE_DEFAULTS, "model": model, **config, "data": str(path), "max_steps": max_steps}).validate()
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
                              f"{metrics.steps_to_certified} of {max_steps} steps (certified: {', '.join(tried)})")
    raise MemlawError(f"{path}: no rank up to {ranks[-1]} certified every record within {max_steps} steps "
                      f"({', '.join(tried)}); give --rank and a larger --max-steps")


def capacity_warning(summary: DataSummary, rank: int, table: str | Path | None) -> str | None:
    """A warning if the file holds more records than `rank` held in a `memlaw capacity` search (if measured)."""
    if table is None:
        return None
    values = json.loads(Path(table).read_text(encoding="utf-8"))
    held = values.get("ranks", {}).get(str(rank))
    if held is None or summary.records <= held["records"]:
        return None
    return (f"{summary.records} records exceed the {held['records']} that rank {rank} held in `memlaw capacity` "
            f"({values.get('protocol', 'see docs/benchmarks.md')}); expect to need more steps or a larger rank")


def advise(summary: DataSummary, law: str | Path | None = None, group: str | None = None, form: str | None = None,
           probe: dict | None = None, method: str | None = None, note=None) -> Advice:
    """The rank for this data: from `law` (or the default model's shipped law), else from a probe.

    Without `group`, the law's group for `method` (the method that will train) if it has one, else its
    combined law. The shipped law was fitted on PhoneBook (initial loss about 3.7 nats); for a file it
    cannot answer (a higher initial loss puts "everything stored" above the law's ceiling, say) the
    probe answers instead, and `note` (a callable, if given) hears why first. A law the user chose
    that cannot answer is an error."""
    default_model = summary.model == "default"
    shipped = law is None and default_model
    law = law if law is not None else (default_file(DEFAULT_MODEL_LAW) if default_model else None)
    advice = None
    if law is not None:
        if group is None and method is not None:
            from .lawfile import pick_group, read_law

            try:
                pick_group(read_law(law), f"method={method}", law)
                group = f"method={method}"
            except MemlawError:
                pass  # no group of its own: the combined law
        try:
            advice = law_advice(summary, law, group, form)
        except MemlawError as e:
            if not shipped:
                raise
            why = f"the shipped law ({DEFAULT_MODEL_LAW}) cannot answer for this file: {str(e).split(': ', 1)[-1]}"
            if note is not None:
                note(why + "; probing instead")
    if advice is None:
        advice = probe_advice(summary.path, summary.model, **(probe or {}))
    advice.warning = capacity_warning(summary, advice.rank, default_file(DEFAULT_MODEL_CAPACITY) if default_model else None)
    return advice
