"""`memlaw fit` (results table -> law.json) and `memlaw plan` (law.json -> smallest rank for a target)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ..errors import MemlawError
from .forms import FORMS
from .groups import GROUP_KEYS, SATURATION_MARGIN, TARGETS
from .lawfile import LAW_FILE, ci_text, default_group, group_key, group_label, group_law, law_rows, pick_group, read_law, write_law

MAX_LISTED_EXCLUDED = 10


def register(subparsers: Any) -> None:
    """Add the `fit` and `plan` subcommands."""
    p = subparsers.add_parser(
        "fit",
        help="fit the Parametric Memory Law per group of a sweep's results; write law.json",
        description="Fits the law in two forms, the paper's dL = C * rank^alpha * length^(-beta) + b and the "
        "bounded dL = L0 * h/(1+h) with h = C * rank^alpha * length^(-beta), per group (--by) and per "
        "(model, benchmark), with a robust loss, bootstrap confidence intervals, AIC/BIC and, with --holdout, "
        "the error on held-out cells.",
    )
    p.add_argument("results", help="results.parquet or results.csv, or a sweep folder holding one")
    p.add_argument("--out", default=None, help=f"folder for {LAW_FILE} (a path ending in .json is the file itself; "
                   "default: the sweep folder's law/, where `memlaw report` looks)")
    p.add_argument("--loss", default="soft_l1", help="robust loss: soft_l1, huber, cauchy or linear (default: soft_l1)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap refits for the intervals (default: 200)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--by", default=",".join(GROUP_KEYS), metavar="COL,...",
                   help=f"columns that define a group (default: {','.join(GROUP_KEYS)}); "
                   "a combined law per model and benchmark is always fitted too")
    p.add_argument("--holdout", default=None, metavar="COND,...",
                   help="hold these cells out of a second fit and report its error on them, e.g. 'rank>=16' or "
                   "'length>=max' (all conditions must hold; max/min: the column's extreme value)")
    p.add_argument("--only", default=None, metavar="COND,...",
                   help="fit only these cells, e.g. 'length<=160' (same syntax as --holdout); recorded in law.json")
    p.add_argument("--exclude-saturated", action="store_true",
                   help="leave out cells outside the law's regime, read from recall: saturated (every record "
                   "recalled or certified) or at the format floor (no record recalled, nothing below the format floor); "
                   "listed in law.json with the reason")
    p.add_argument("--saturation-margin", type=float, default=SATURATION_MARGIN,
                   help=f"how close to the format floor counts as 'nothing beyond the format stored' (default: {SATURATION_MARGIN})")
    p.add_argument("--target", default="delta_loss", choices=sorted(TARGETS),
                   help="what the law describes: delta_loss (ΔL, the paper's target; the default) or memorized_delta_loss "
                   "(the part of ΔL below the format floor, what stored records rather than the answers' format)")
    p.set_defaults(func=cmd_fit)

    p = subparsers.add_parser(
        "plan", help="smallest rank the fitted law predicts reaches a loss reduction, or that stores your records file",
        description="Either --law LAW --length N --delta-loss D, or --data FILE: count the file's answer tokens with "
        "the model's tokenizer, measure the base model's loss, and recommend the smallest rank that stores every "
        "record, from --law (default for the default model: the law shipped from results/smollm2-135m) or, without "
        "a law, from a quick probe at ranks 1, 2, 4, ...")
    p.add_argument("--law", default=None, help=f"{LAW_FILE} written by `memlaw fit`")
    p.add_argument("--length", type=int, default=None, help="answer tokens to memorize")
    p.add_argument("--delta-loss", type=float, default=None,
                   help="target loss reduction, nats per trained token (answer and end-of-turn suffix, as the law's ΔL)")
    p.add_argument("--data", default=None, metavar="FILE", help="a records JSONL file to plan for (replaces --length and --delta-loss)")
    p.add_argument("--model", default="default", help="--data: the model whose tokenizer counts and whose loss is measured (default: the embedded one)")
    p.add_argument("--no-chat-template", action="store_true", help="--data: raw query + target, as `memlaw train --no-chat-template`")
    p.add_argument("--probe-steps", type=int, default=None, metavar="N",
                   help="--data, when probing: cap each probe at N steps (default: no cap; each probe has 300 epochs)")
    p.add_argument("--group", default=None, metavar="KEY=VALUE,...",
                   help="use this group's law (default: the combined law, when the file has one)")
    p.add_argument("--form", default=None, choices=sorted(FORMS),
                   help="law form (default: the group's preferred form: the lower held-out error if the fit "
                   "had --holdout, else the paper's)")
    p.set_defaults(func=cmd_plan)


# ---------------------------------------------------------------------- fit
def cmd_fit(args: argparse.Namespace) -> int:
    from ..sweep.results import read_results, results_path, sweep_table
    from .groups import Holdout, fit_groups

    given = Path(args.results)
    if given.is_dir() and not (given / "results.parquet").is_file() and (given / "results.csv").is_file():
        path = results_path(given)
        table = read_results(path)
    elif given.is_dir() or (given.name == "results.parquet" and (given.parent / "grid.yaml").is_file()):
        folder = given if given.is_dir() else given.parent
        path, table = folder / "results.parquet", sweep_table(folder)  # rebuilt from the cells if damaged
    else:
        path = results_path(given)
        table = read_results(path)
    by = [c.strip() for c in args.by.split(",") if c.strip()]
    holdout = Holdout.parse(args.holdout) if args.holdout is not None else None
    only = Holdout.parse(args.only, "--only") if args.only is not None else None
    try:
        law = fit_groups(table, by, holdout=holdout, only=only, exclude_saturated=args.exclude_saturated,
                         saturation_margin=args.saturation_margin, target=args.target, loss=args.loss, n_bootstrap=args.bootstrap,
                         random_state=args.seed)
    except MemlawError as e:
        raise MemlawError(f"{path}: {e}") from None
    law = {"source": str(path), **law}
    out = write_law(args.out if args.out is not None else path.parent / "law", law)
    print_law_table(law)
    print(f"law: {out}")
    return 0


def print_law_table(law: dict) -> None:
    """One line per group and form (* the preferred form), then the excluded cells and the skipped groups."""
    rows = law_rows(law)
    width = max(len(r["group"]) for r in rows)
    holdout = law.get("holdout")
    print(f"{'group':<{width}}  {'form':<8} {'n':>5}  " + "  ".join(f"{h:<26}" for h in ("C", "alpha", "beta", "b | L0"))
          + "  R²      MAPE %  AIC       BIC" + (f"       held out ({holdout}): n  MAPE %  R²" if holdout else ""))
    for r in rows:
        cells = "  ".join(f"{ci_text(value, ci):<26}" for _, value, ci in r["params"])
        line = (f"{r['group']:<{width}}  {r['form'] + ('*' if r['preferred'] else ''):<8} {r['n']:>5}  {cells}  "
                f"{_num(r['r2'], '.4f'):<6}  {_num(r['mape'], '.2f'):<6}  {_num(r['aic'], '.1f'):<8}  {_num(r['bic'], '.1f'):<8}")
        if holdout:
            line += (f"  {r['heldout_error']}" if r["heldout_error"] else
                     f"  {r['heldout_n']:>4}  {_num(r['heldout_mape'], '.2f'):<6}  {_num(r['heldout_r2'], '.4f')}")
        print(line)
    print("* preferred form: " + ("the lower held-out MAPE" if holdout else "the paper's (no --holdout given)"))
    if "regime" in law:
        g = law["regime"]
        share = {k: f"{g[k]} ({g[k] / max(g['cells'], 1):.0%})" for k in ("saturated", "ceiling", "floor")}
        print(f"regime: {g['cells']} cells; saturated by recall {share['saturated']}; ΔL within {g['margin']:.0%} of its "
              f"ceiling (the initial loss) {share['ceiling']}; within {g['margin']:.0%} of the format floor {share['floor']}")
    excluded = law.get("excluded", [])
    if excluded:
        print(f"excluded {len(excluded)} saturated cell(s):")
        for e in excluded[:MAX_LISTED_EXCLUDED]:
            print(f"  {e.get('cell') or group_label(group_key(e))} (rank {e.get('rank')}, length {e.get('length')}): {e['reason']}")
        if len(excluded) > MAX_LISTED_EXCLUDED:
            print(f"  … {len(excluded) - MAX_LISTED_EXCLUDED} more in law.json")
    for s in law["skipped"]:
        print(f"skipped {'combined ' if s.get('combined') else ''}{group_label(group_key(s))}: {s['reason']}")


def _num(value: float | None, spec: str) -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


# ---------------------------------------------------------------------- plan
def cmd_plan(args: argparse.Namespace) -> int:
    if args.data is not None:
        if args.length is not None or args.delta_loss is not None:
            raise MemlawError("plan: --data measures the length and the target; drop --length and --delta-loss")
        advice, summary = plan_for_data(args.data, args.model, args.law, args.group, args.form, not args.no_chat_template,
                                        args.probe_steps)
        print(f"rank     {advice.rank}")
        return 0
    missing = [flag for flag, value in (("--law", args.law), ("--length", args.length), ("--delta-loss", args.delta_loss))
               if value is None]
    if missing:
        raise MemlawError(f"plan: give --data FILE, or {', '.join(missing)} (with --law, --length and --delta-loss)")
    law = read_law(args.law)
    label, group = default_group(law, args.law) if args.group is None else pick_group(law, args.group, args.law)
    fitted = group_law(group, args.form)
    plan = fitted.rank_for(args.length, args.delta_loss)
    print(f"law      {label}, {fitted.form} form (n={fitted.n_}, R² {_num(fitted.r2_, '.4f')})")
    print(f"target   ΔL ≥ {plan.delta_loss:g} nats per trained token at length {plan.length:g}")
    if plan.interval is None:
        print(f"rank     {plan.rank:.4g}")
        print(f"choose   rank {plan.power_of_two} (smallest power of two ≥ {plan.rank:.4g})")
        return 0
    lo, hi = plan.interval
    level = f"{plan.confidence:.0%}"
    print(f"rank     {plan.rank:.4g} ({level} interval {lo:.4g} – {_rank_text(hi)})")
    print(f"choose   rank {plan.power_of_two} (smallest power of two ≥ {plan.rank:.4g}; "
          f"{level} interval {_pow2_text(lo)} – {_pow2_text(hi)})")
    return 0


def plan_for_data(data: str, model: str, law: str | None, group: str | None, form: str | None, chat_template: bool,
                  probe_steps: int | None = None, method: str | None = None):
    """Measure a records file and advise a rank (memlaw.law.advice), printing each step; shared by
    `plan --data` and `memorize --rank auto`. Returns (advice, summary)."""
    from .advice import advise, summarize_data

    if probe_steps is not None and probe_steps <= 0:
        raise MemlawError(f"--probe-steps: must be a positive integer, got {probe_steps}")
    summary = summarize_data(data, model, chat_template)
    print(f"data     {data}: {summary.records} records, {summary.answer_tokens} answer tokens "
          f"({summary.trained_tokens} trained with the end-of-turn suffixes), tokenizer of {model}")
    print(f"initial  loss {summary.initial_loss:.3f} nats per trained token (the base model)")
    print(f"bits     {summary.information_bits:.0f} bits of information in the records ({summary.information_source})")

    def probed(rank: int, metrics) -> None:
        print(f"probe    rank {rank}: {metrics.certified_fraction:.0%} certified in {metrics.steps} steps", flush=True)

    probe = {"progress": probed, "chat_template": chat_template, **({"max_steps": probe_steps} if probe_steps else {})}
    advice = advise(summary, law, group, form, probe, method, note=lambda why: print(f"law      {why}", flush=True))
    print(f"why      {advice.reason}")
    if advice.warning:
        print(f"warning  {advice.warning}")
    return advice, summary


def _rank_text(rank: float) -> str:
    return f"{rank:.4g}" if math.isfinite(rank) else "unreachable"


def _pow2_text(rank: float) -> str:
    from .fit import next_power_of_two

    return str(next_power_of_two(rank)) if math.isfinite(rank) else "unreachable"
