"""The one data entry point: benchmark settings -> records.

`memlaw data`, sweep cells and capacity probes all describe the data they need as a
:class:`DataSpec` and call :func:`generate`, so a benchmark is generated the same way
wherever it is used (and a new benchmark is added here once).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..errors import MemlawError

BENCHMARKS = ("phonebook", "long-context", "linear-rule")


@dataclass(frozen=True)
class DataSpec:
    """What to generate: `length` answer tokens (phonebook: records until their answers reach it; long-context:
    the target's tokens) or `records` records (phonebook: instead of a length; linear-rule: the training pairs)."""

    benchmark: str
    length: int | None = None
    records: int | None = None
    seed: int = 42
    ratio: str | None = None  # long-context: r0 … r100
    source: str | None = None  # long-context: a text or reference .jsonl file (default: the built-in text)
    heldout: int | None = None  # linear-rule: held-out pairs
    max_value: int = 99  # linear-rule: x and y range over 0..max_value


@lru_cache(maxsize=4)
def _tokenizer(model: str, trust_remote_code: bool):
    from ..model.loading import load_tokenizer

    return load_tokenizer(model, trust_remote_code)


def generate(spec: DataSpec, model: str = "default", trust_remote_code: bool = False) -> tuple[list[dict], list[dict] | None]:
    """(training records, held-out records or None). Token counts use `model`'s tokenizer."""
    if spec.benchmark == "linear-rule":
        from .linear_rule import generate_linear_rule

        if spec.records is None or spec.heldout is None:
            raise MemlawError("linear-rule: needs the number of training and held-out pairs")
        return generate_linear_rule(spec.records, spec.heldout, seed=spec.seed, max_value=spec.max_value)
    if spec.benchmark == "phonebook":
        from .phonebook import generate_phonebook

        return generate_phonebook(_tokenizer(model, trust_remote_code), seed=spec.seed, length=spec.length,
                                  records=spec.records), None
    if spec.benchmark == "long-context":
        from .long_context import generate_long_context, read_source

        if spec.ratio is None or spec.length is None:
            raise MemlawError("long-context: needs a ratio and a length")
        text = read_source(spec.source) if spec.source is not None else None
        tokenizer = _tokenizer(model, trust_remote_code)
        row = generate_long_context(tokenizer, spec.ratio, spec.length, seed=spec.seed, text=text, source=spec.source)
        return [row], None
    raise MemlawError(f"unknown benchmark {spec.benchmark!r}; choose from {', '.join(BENCHMARKS)}")
