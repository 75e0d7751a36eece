"""Long-Context benchmark: one long natural text with a seeded fraction of tokens replaced at random.

The natural source ships with Python itself: the language-reference topics of ``pydoc_data``.
Output follows the reference format ``{"question", "matching", ...}``; the target is the
first ``length`` tokens of ``matching``.
"""

from __future__ import annotations

import random

from ..errors import MemlawError

QUESTION = "Please output the content of the vector memory injected into the activations."
RATIOS = {"r0": 0.0, "r20": 0.2, "r40": 0.4, "r60": 0.6, "r80": 0.8, "r100": 1.0}


def natural_text() -> str:
    """English prose from Python's own documentation (pydoc topics), in a fixed order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def ordinary_token_ids(tokenizer) -> list[int]:
    """Vocabulary ids that are not special or added tokens."""
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return [i for i in range(tokenizer.vocab_size) if i not in special]


def generate_long_context(tokenizer, ratio: str, length: int, seed: int = 42, text: str | None = None) -> dict:
    if ratio not in RATIOS:
        raise MemlawError(f"long-context: unknown ratio {ratio!r}; choose from {', '.join(RATIOS)}")
    if length <= 0:
        raise MemlawError("long-context: --length must be a positive integer")
    source = tokenizer(text if text is not None else natural_text(), add_special_tokens=False)["input_ids"]
    vocab = ordinary_token_ids(tokenizer)
    span = length + max(16, length // 4)  # margin: re-tokenizing noisy text can merge tokens
    while True:
        if len(source) < length:
            raise MemlawError(f"long-context: the source text has only {len(source)} tokens, fewer than --length {length}")
        rng = random.Random(seed)
        ids = list(source[: min(span, len(source))])
        positions = sorted(rng.sample(range(len(ids)), round(RATIOS[ratio] * len(ids))))
        for p in positions:
            ids[p] = rng.choice(vocab)
        matching = tokenizer.decode(ids)
        if len(tokenizer(matching, add_special_tokens=False)["input_ids"]) >= length or span >= len(source):
            break
        span *= 2
    return {
        "question": QUESTION,
        "matching": matching,
        "not_matching": "",
        "length": length,
        "original_token_count": len(source),
        "noise_ratio": RATIOS[ratio],
        "noise_count": len(positions),
        "noise_positions": positions,
        "seed": seed,
    }
