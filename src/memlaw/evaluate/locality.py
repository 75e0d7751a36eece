"""Locality: what else the adapter changed, away from the records it memorized.

A memory unit should change the model's answers to its records and little else. Three measures,
each comparing the model with the unit (adapted) against the same model with the unit disabled
(base), on inputs unrelated to any record:

* ``kl_text``: mean KL(base ‖ adapted) of the next-token distributions over a built-in sample of
  general English text (memlaw/data/general_text.txt, ~600 tokens), in nats per token;
* ``ppl_base`` / ``ppl_adapted``: perplexity of that text, and ``ppl_change`` = adapted / base − 1;
* on built-in unrelated prompts (memlaw/data/unrelated_prompts.txt, 32 everyday questions, with
  the run's own prompt construction): ``kl_prompts``, the same KL at the positions of the base
  model's greedy answer, and ``unchanged``, the fraction of prompts whose greedy answer (up to
  ``ANSWER_TOKENS`` tokens) is the same token for token.

A unit that is zero (B = 0) gives exactly 0, 0 and 1. What good values look like is in the
README ("Remember your own facts").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch

from ..data.encoding import prompt_ids, suffix_ids
from ..errors import MemlawError
from .recall import greedy_generate

WINDOW = 256  # tokens of general text per forward pass
ANSWER_TOKENS = 16  # greedy answer length compared on the unrelated prompts


@dataclass
class Locality:
    kl_text: float
    ppl_base: float
    ppl_adapted: float
    kl_prompts: float
    unchanged: float
    text_tokens: int
    prompts: int
    source: str = "built-in"  # where the prompts came from: built-in, or the --locality-data file

    @property
    def ppl_change(self) -> float:
        return self.ppl_adapted / self.ppl_base - 1.0

    def to_dict(self) -> dict:
        return {**asdict(self), "ppl_change": self.ppl_change}

    def lines(self) -> list[str]:
        return [
            "locality (the unit's effect away from its records; 0, 0%, 100% = none):",
            f"  KL(base || adapted) on general text  {self.kl_text:.5f} nats/token ({self.text_tokens} tokens)",
            f"  perplexity of that text              {self.ppl_base:.3f} -> {self.ppl_adapted:.3f} ({self.ppl_change:+.2%})",
            f"  KL on unrelated prompts' answers     {self.kl_prompts:.5f} nats/token",
            f"  unrelated prompts answered the same  {self.unchanged:.1%} of {self.prompts}"
            + ("" if self.source == "built-in" else f" (from {self.source})"),
        ]


def builtin_text() -> str:
    return resources.files("memlaw.data").joinpath("general_text.txt").read_text(encoding="utf-8")


def builtin_prompts() -> list[str]:
    text = resources.files("memlaw.data").joinpath("unrelated_prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_locality_prompts(path: str | Path) -> list[str]:
    """--locality-data FILE: the user's own unrelated prompts, one per line (.txt) or a "query" per line (.jsonl)."""
    from ..data.records import load_queries

    path = Path(path)
    if not path.is_file():
        raise MemlawError(f"--locality-data {path}: no such file")
    if path.suffix == ".jsonl":
        prompts = [row["query"] for row in load_queries(path)]
    else:
        try:
            prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as e:
            raise MemlawError(f"--locality-data {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not prompts:
        raise MemlawError(f"--locality-data {path}: no prompt in it (one per line, or JSONL with \"query\")")
    return prompts


def _kl_and_nll(session, ids: list[int], positions: slice) -> tuple[float, float, int]:
    """Sums over `positions` (of the logits predicting the next token) of KL(base || adapted) and the
    adapted and base next-token NLL; and how many positions."""
    model, device = session.adapter.model, session.loaded.device
    x = torch.tensor([ids], device=device)
    with torch.no_grad():
        adapted = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)[positions]  # (n, V)
        with session.adapter.disabled():
            base = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)[positions]
    kl = (base.exp() * (base - adapted)).sum(-1).clamp_min(0.0)  # (n,) exact zeros when nothing changed
    nxt = x[0, 1:][positions]
    return float(kl.sum()), (float(-adapted.gather(1, nxt[:, None]).sum()), float(-base.gather(1, nxt[:, None]).sum())), len(kl)


def measure_locality(session, text: str | None = None, prompts: list[str] | None = None,
                     prompts_file: str | Path | None = None) -> Locality:
    """The three measures of the module docstring for the session's attached unit (eval mode); the unrelated
    prompts are `prompts`, else those of `prompts_file` (--locality-data), else the built-in ones."""
    tok, cfg = session.loaded.tokenizer, session.cfg
    session.adapter.set_training(False)
    text = builtin_text() if text is None else text
    source = "built-in" if prompts is None and prompts_file is None else str(prompts_file or "given")
    if prompts is None:
        prompts = read_locality_prompts(prompts_file) if prompts_file is not None else builtin_prompts()

    ids = tok(text)["input_ids"]
    kl_sum, nll_adapted, nll_base, n = 0.0, 0.0, 0.0, 0
    for start in range(0, max(len(ids) - 1, 1), WINDOW):
        window = ids[start : start + WINDOW + 1]
        if len(window) < 2:
            break
        kl, (a, b), k = _kl_and_nll(session, window, slice(None))
        kl_sum, nll_adapted, nll_base, n = kl_sum + kl, nll_adapted + a, nll_base + b, n + k

    suffix = suffix_ids(tok, cfg.chat_template)
    stop = suffix[0] if suffix else tok.eos_token_id
    inputs = [prompt_ids(tok, p, cfg.chat_template) for p in prompts]
    bs, device, pad = cfg.eval_batch_size, session.loaded.device, session.pad_id
    adapted = greedy_generate(session.adapter.model, inputs, [ANSWER_TOKENS] * len(inputs), pad, bs, device, stop=stop)
    with session.adapter.disabled():
        base = greedy_generate(session.adapter.model, inputs, [ANSWER_TOKENS] * len(inputs), pad, bs, device, stop=stop)
    same = sum(a == b for (a, _), (b, _) in zip(adapted, base))
    kl_prompts, m = 0.0, 0
    for prompt, (answer, _) in zip(inputs, base):  # the base model's answer, teacher-forced through both
        seq = prompt + answer + ([stop] if len(answer) < ANSWER_TOKENS and stop is not None else [])
        kl, _, k = _kl_and_nll(session, seq, slice(len(prompt) - 1, None))
        kl_prompts, m = kl_prompts + kl, m + k
    return Locality(
        kl_text=kl_sum / n, ppl_base=float(torch.exp(torch.tensor(nll_base / n))), ppl_adapted=float(torch.exp(torch.tensor(nll_adapted / n))),
        kl_prompts=kl_prompts / max(m, 1), unchanged=same / len(prompts), text_tokens=n, prompts=len(prompts),
        source=source)
