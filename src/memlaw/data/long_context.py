"""Long-Context benchmark: one long natural text with a fraction of its tokens replaced at random.

Replaced positions follow the reference: for a source of N tokens and ratio r, c = round(r·N)
positions spread evenly over the whole source, the k-th at floor((2k + 1)·N / 2c) — at r20
positions 2, 7, 12, … So a prefix of L tokens (L <= N) holds exactly ceil(c·L/N - 1/2) random
tokens (:func:`prefix_noise_count`): r·L whenever r·L is whole, within one otherwise. (The
source-free floor((k + 1/2)/r) gives the same positions only up to about N/2: the reference's
files show one spacing over the whole source, e.g. position 14 856, not 14 857, at r20.)
The random tokens are drawn from a seeded RNG in position order, so there is one noisy text per
(ratio, seed, source, tokenizer) and the target at length L is the first L tokens of the target
at every longer length. The record keeps those token ids (``matching_ids``) beside the text,
because re-tokenizing decoded noisy text can merge or split tokens.

The built-in source ships with Python itself: the language-reference topics of ``pydoc_data``;
``--source`` takes any text. Output follows the reference format ``{"question", "matching", ...}``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..errors import MemlawError

QUESTION = "Please output the content of the vector memory injected into the activations."
RATIOS = {"r0": 0.0, "r20": 0.2, "r40": 0.4, "r60": 0.6, "r80": 0.8, "r100": 1.0}
BUILTIN_SOURCE = "pydoc_data.topics"


def natural_text() -> str:
    """English prose from Python's own documentation (pydoc topics), in a fixed order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def read_source(path: str) -> str:
    """The text of a ``--source`` file: plain UTF-8 text, or (``.jsonl``) a reference Long-Context
    file whose first line's ``matching`` is the text (e.g. the reference's LongBench paper)."""
    where = f"long-context source {path}"
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise MemlawError(f"{where}: cannot read it ({e.strerror or e})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MemlawError(f"{where}: not UTF-8 text")
    if "\x00" in text:
        raise MemlawError(f"{where}: not text (it holds NUL bytes)")
    if Path(path).suffix.lower() == ".jsonl":
        lines = [(n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
        if not lines:
            raise MemlawError(f"{where}: empty")
        n, line = lines[0]
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise MemlawError(f"{where}:{n}: malformed JSON ({e.msg} at column {e.colno})")
        if not isinstance(obj, dict) or not isinstance(obj.get("matching"), str):
            raise MemlawError(f"{where}:{n}: no string field 'matching' (a .jsonl source is read in the reference Long-Context format)")
        text = obj["matching"]
    if not text.strip():
        raise MemlawError(f"{where}: empty")
    return text


def ordinary_token_ids(tokenizer) -> list[int]:
    """Vocabulary ids that are not special or added tokens."""
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return [i for i in range(tokenizer.vocab_size) if i not in special]


def _check_ratio(ratio: str) -> int:
    if ratio not in RATIOS:
        raise MemlawError(f"long-context: unknown ratio {ratio!r}; choose from {', '.join(RATIOS)}")
    return round(RATIOS[ratio] * 100)


def noise_total(n_tokens: int, ratio: str) -> int:
    """c = round(r·N): random tokens over a whole source of N tokens (never a tie for r in 20% steps)."""
    return (_check_ratio(ratio) * n_tokens + 50) // 100


def noise_positions(n_tokens: int, ratio: str, limit: int | None = None) -> list[int]:
    """The replaced positions of a source of N tokens, those below `limit` (default: all)."""
    c = noise_total(n_tokens, ratio)
    limit = n_tokens if limit is None else min(limit, n_tokens)
    out: list[int] = []
    for k in range(c):
        p = (2 * k + 1) * n_tokens // (2 * c)
        if p >= limit:
            break
        out.append(p)
    return out


def prefix_noise_count(prefix: int, n_tokens: int, ratio: str) -> int:
    """Random tokens among the first `prefix` tokens: #{k : (2k + 1)·N / 2c < L} = ceil(c·L/N - 1/2)."""
    c = noise_total(n_tokens, ratio)
    return (2 * c * min(prefix, n_tokens) + n_tokens - 1) // (2 * n_tokens)


def generate_long_context(tokenizer, ratio: str, length: int, seed: int = 42, text: str | None = None,
                          source: str | None = None) -> dict:
    """The first `length` tokens of the noisy `text` (default: the built-in source); `source` names
    the text's origin in the record."""
    _check_ratio(ratio)
    if length <= 0:
        raise MemlawError("long-context: --length must be a positive integer")
    source_ids = tokenizer(text if text is not None else natural_text(), add_special_tokens=False)["input_ids"]
    n = len(source_ids)
    if n < length:
        name = source if source is not None else (BUILTIN_SOURCE if text is None else "text")
        raise MemlawError(f"long-context: the source {name} has only {n} tokens, fewer than --length {length}")
    ids = list(source_ids[:length])
    positions = noise_positions(n, ratio, limit=length)
    if positions:
        vocab = ordinary_token_ids(tokenizer)
        rng = random.Random(seed)
        for p in positions:  # in position order: a longer target only draws more
            ids[p] = rng.choice(vocab)
    return {
        "question": QUESTION,
        "matching": tokenizer.decode(ids),
        "matching_ids": ids,
        "tokenizer": tokenizer.name_or_path,
        "not_matching": "",
        "length": length,
        "source": source if source is not None else (BUILTIN_SOURCE if text is None else None),
        "original_token_count": n,
        "noise_ratio": RATIOS[ratio],
        "noise_count": len(positions),
        "noise_positions": positions,
        "seed": seed,
    }
