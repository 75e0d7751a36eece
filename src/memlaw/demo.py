"""`make demo`: the law study in miniature on the default model.

The `smollm2-demo` sweep (PhoneBook, ranks × lengths) → `memlaw fit` → `memlaw analyze` →
`memlaw report`, each step exactly the command a user would run; then the fitted laws (both
forms, with their error on the largest rank held out), their R² and the report's path are printed.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Callable

from .errors import MemlawError
from .law.lawfile import LAW_FILE, ci_text, group_law, read_law

DEMO_PRESET = "smollm2-demo"
HOLDOUT = "rank>=max"  # the fit is also judged on predicting the largest rank from the smaller ones
Command = Callable[[list[str]], int]  # `memlaw ARGV...` -> exit code (cli.main)


def register(subparsers, run: Command) -> None:
    """`memlaw demo`; `run` executes each step as the CLI would (passed in: the CLI imports this module)."""
    p = subparsers.add_parser(
        "demo",
        help="the law study in miniature on the default model: sweep -> fit -> analyze -> report",
        description="Runs `memlaw sweep --preset smollm2-demo`, `memlaw fit`, `memlaw analyze` and `memlaw report` "
        "into --out (resumable: finished cells are kept).",
    )
    p.add_argument("--out", default="runs/demo", help="sweep folder (default: runs/demo)")
    p.add_argument("--preset", default=DEMO_PRESET, help="sweep preset or grid YAML (default: smollm2-demo)")
    p.add_argument("--engine", default="local", choices=["local", "ray"], help="sweep engine (default: local)")
    p.set_defaults(func=partial(cmd_demo, run=run))


def cmd_demo(args: argparse.Namespace, run: Command) -> int:
    run_demo(Path(args.out), run, preset=args.preset, engine=args.engine)
    return 0


def demo_steps(out: Path, preset: str, engine: str) -> list[list[str]]:
    """The four commands; `preset` is a preset name or a grid YAML file."""
    grid = [preset] if preset.endswith((".yaml", ".yml")) else ["--preset", preset]
    return [
        ["sweep", *grid, "--out", str(out), "--engine", engine],
        ["fit", str(out), "--out", str(out / "law"), "--holdout", HOLDOUT],
        ["analyze", str(out)],
        ["report", str(out)],
    ]


def run_demo(out: Path, run: Command, preset: str = DEMO_PRESET, engine: str = "local") -> dict:
    """Run the study with `run` (cli.main); return the (first) combined group of law.json."""
    for argv in demo_steps(out, preset, engine):
        print(f"\ndemo: memlaw {' '.join(argv)}", flush=True)
        if run(argv) != 0:
            raise MemlawError(f"demo stopped: `memlaw {' '.join(argv)}` failed (see above)")
    law = read_law(out / "law" / LAW_FILE)
    for group in law["combined"]:
        print(f"\ndemo: fitted Parametric Memory Law for the default model ({preset}, n = {group['n']} runs; "
              f"held out for the extrapolation error: {law['holdout']}):")
        for form, entry in group["laws"].items():
            fitted = group_law(group, form)
            held = (group.get("holdout") or {}).get(form, {})
            star = "  <- preferred (lower held-out error)" if form == group["preferred"] else ""
            print(f"  {form:<8} {law['forms'][form]}")
            ci = entry.get("ci") or {}
            print("           " + ", ".join(f"{name} = {ci_text(entry[name], ci.get(name), '.3g')}" for name in fitted.form_.params))
            print(f"           R² = {fitted.r2_:.4f}, MAPE = {fitted.mape_:.2f} %, AIC = {fitted.aic_:.1f}; "
                  f"held-out MAPE = {held.get('mape', float('nan')):.2f} %{star}")
    print("  (the paper: R² > 0.98 in every setting; docs/law.md reads this table)")
    print(f"demo: report: {(out / 'report.html').resolve()}")
    return law["combined"][0]
