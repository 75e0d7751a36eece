"""PhoneBook benchmark: unique "First Last:" keys -> 10 random digits (reference JSONL format)."""

from __future__ import annotations

import itertools
import random

from ..errors import MemlawError
from .names import FIRST_NAMES, LAST_NAMES


def generate_phonebook(tokenizer, seed: int = 42, length: int | None = None, records: int | None = None) -> list[dict]:
    """Records ``{"id", "query", "target", "target_len"}``.

    Stop after `records` records, or once the answer tokens (counted with `tokenizer`) reach
    `length`. Record i is the same for every size with the same seed, so sets are nested.
    """
    if (length is None) == (records is None):
        raise MemlawError("phonebook: give exactly one of --length or --records")
    limit = length if length is not None else records
    if limit is None or limit <= 0:
        raise MemlawError(f"phonebook: {'--length' if length is not None else '--records'} must be a positive integer")
    rng = random.Random(seed)
    names = list(itertools.product(FIRST_NAMES, LAST_NAMES))
    rng.shuffle(names)
    out: list[dict] = []
    used_ids: set[int] = set()
    tokens = 0
    for first, last in names:
        if (records is not None and len(out) >= records) or (length is not None and tokens >= length):
            break
        rid = rng.randrange(1_000_000)
        while rid in used_ids:
            rid = rng.randrange(1_000_000)
        used_ids.add(rid)
        number = "".join(rng.choice("0123456789") for _ in range(10))
        n_tok = len(tokenizer(number, add_special_tokens=False)["input_ids"])
        out.append({"id": rid, "query": f"{first} {last}:", "target": number, "target_len": n_tok})
        tokens += n_tok
    else:
        if (records is not None and len(out) < records) or (length is not None and tokens < length):
            raise MemlawError(f"phonebook: only {len(names)} unique names available; asked for too many records")
    return out
