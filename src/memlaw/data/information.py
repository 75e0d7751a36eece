"""How much a record holds: the information a model must store to recall its answer exactly, in bits.

The loss a run removes (ΔL) mixes two things: learning the answers' *format* (PhoneBook's "ten
digits, the first 6-9", the end-of-turn suffix) and storing the *records*. A model that knows
only the format already loses about half of PhoneBook's initial loss, so counting ΔL as memory
overstates it (1.6-21x in the committed study's cells that recall a record). What a generated benchmark stores is known
exactly, and a format-only model's loss on it is that information itself:

* PhoneBook: a number's first digit is one of 4 (6-9), the other nine one of 10 each:
  log2 4 + 9·log2 10 = 31.9 bits per record;
* the linear rule (f(x, y) = 3x + 5y + 7 on x, y uniform in 0..99): the entropy of the answer,
  9.4 bits per record, for a model that has not found the rule (one that has needs none);
* Long-Context made by memlaw for this tokenizer: each randomly replaced token is drawn uniformly
  from the tokenizer's ordinary vocabulary, so it holds log2 of that size (15.6 bits for
  SmolLM2's 49 152); the natural tokens around them are counted by the base model's loss on
  them, an upper bound on what a model must store for text it can partly predict (r0 is then
  all estimate, r100 all exact);
* anything else: a record may declare ``"info_bits"`` in its JSONL line (memlaw's generators
  could, users may); otherwise the base model's own loss on the answer, in bits, stands in: an
  upper bound (the base model knows less of the format than a trained one would), said so.

:func:`record_information` gives each record's bits and where they come from. The format floor
(:func:`format_floor_nats`) is the loss of a model that knows the format and nothing of the
records: the record's information for its answer tokens, 0 for the trained end-of-turn suffix.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Sequence

PHONEBOOK_TARGET = re.compile(r"[6-9][0-9]{9}")
PHONEBOOK_BITS = math.log2(4) + 9 * math.log2(10)  # 31.897
PHONEBOOK = "phonebook"
LONG_CONTEXT = "long-context (random tokens exact, natural text by base-model loss)"
LINEAR_RULE = "linear-rule"
LINEAR_QUERY = re.compile(r"f\((\d+), (\d+)\) =")
DECLARED = "declared"
BASE_LOSS = "base-model loss (upper bound)"


@dataclass(frozen=True)
class Information:
    """Bits per record and the source of the count (one for the whole file)."""

    bits: tuple[float, ...]
    source: str  # PHONEBOOK | DECLARED | BASE_LOSS | "mixed: ..."

    @property
    def total(self) -> float:
        return float(sum(self.bits))

    def of(self, chosen: Sequence[bool]) -> float:
        """The bits of the records where `chosen` is true (e.g. recalled exactly)."""
        return float(sum(b for b, c in zip(self.bits, chosen) if c))


def record_information(records: Sequence, base_token_nats: Sequence[Sequence[float]]) -> Information:
    """Each record's information in bits: declared, else a generated benchmark's exact count, else the base
    model's loss.

    `records`: memlaw.data.records.Record (query, target, info_bits, noise_positions, noise_bits);
    `base_token_nats`: per record, the base model's teacher-forced loss on each answer token (nats).
    """
    bits, sources = [], set()
    for record, base in zip(records, base_token_nats, strict=True):
        base = [float(x) for x in base]
        if record.info_bits is not None:
            bits.append(float(record.info_bits))
            sources.add(DECLARED)
        elif getattr(record, "noise_positions", None) is not None and record.noise_bits is not None:
            noisy = set(record.noise_positions)
            natural = sum(x for i, x in enumerate(base) if i not in noisy) / math.log(2)
            bits.append(len(noisy & set(range(len(base)))) * record.noise_bits + natural)
            sources.add(LONG_CONTEXT)
        elif PHONEBOOK_TARGET.fullmatch(record.target):
            bits.append(PHONEBOOK_BITS)
            sources.add(PHONEBOOK)
        elif linear_rule_record(record.query, record.target):
            bits.append(linear_rule_bits())
            sources.add(LINEAR_RULE)
        else:
            bits.append(sum(base) / math.log(2))
            sources.add(BASE_LOSS)
    source = sources.pop() if len(sources) == 1 else "mixed: " + ", ".join(sorted(sources))
    return Information(tuple(bits), source)


def noise_token_bits(tokenizer) -> float:
    """Bits of one Long-Context random token: log2 of the ordinary vocabulary it is drawn from."""
    from .long_context import ordinary_token_ids

    return math.log2(len(ordinary_token_ids(tokenizer)))


def linear_rule_record(query: str, target: str) -> bool:
    """A linear-rule record (memlaw.data.linear_rule): "f(x, y) =" -> 3x + 5y + 7 with x, y in 0..99."""
    from .linear_rule import rule

    m = LINEAR_QUERY.fullmatch(query)
    return m is not None and max(map(int, m.groups())) <= 99 and target == str(rule(*map(int, m.groups())))


@functools.cache
def linear_rule_bits(max_value: int = 99) -> float:
    """The entropy (bits) of 3x + 5y + 7 with x, y independent and uniform in 0..max_value."""
    from collections import Counter

    from .linear_rule import rule

    counts = Counter(rule(x, y) for x in range(max_value + 1) for y in range(max_value + 1))
    n = (max_value + 1) ** 2
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def format_floor_nats(info: Information) -> float:
    """The summed loss (nats) of a model that knows only the format: each record's information, 0 for its suffix."""
    return info.total * math.log(2)
