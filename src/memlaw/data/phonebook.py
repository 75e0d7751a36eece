"""PhoneBook benchmark: unique "First Last:" keys -> 10 random digits (reference JSONL format).

As in the reference, a number's first digit is 6-9 and the other nine are 0-9, and first and
last names are drawn independently from large pools, so keys rarely share a first or last name.
"""

from __future__ import annotations

import random

from ..errors import MemlawError
from .names import name_pools

ID_SPACE = 1_000_000  # reference ids are random numbers below a million


def generate_phonebook(tokenizer, seed: int = 42, length: int | None = None, records: int | None = None) -> list[dict]:
    """Records ``{"id", "query", "target", "target_len"}``.

    Stop after `records` records, or once the answer tokens (counted with `tokenizer`) reach
    `length`. One seeded RNG draws record after record (a repeated key is drawn again), so
    record i is the same for every size with the same seed: sets are nested prefixes.
    """
    if (length is None) == (records is None):
        raise MemlawError("phonebook: give exactly one of --length or --records")
    limit = length if length is not None else records
    if limit is None or limit <= 0:
        raise MemlawError(f"phonebook: {'--length' if length is not None else '--records'} must be a positive integer")
    first_names, last_names = name_pools()
    # Drawing again on a repeat stays fast while at most half the keys (and ids) are taken.
    capacity = min(len(first_names) * len(last_names), ID_SPACE) // 2
    rng = random.Random(seed)
    out: list[dict] = []
    used_keys: set[str] = set()
    used_ids: set[int] = set()
    tokens = 0
    while (records is not None and len(out) < records) or (length is not None and tokens < length):
        if len(out) >= capacity:
            raise MemlawError(f"phonebook: at most {capacity} records can be generated; asked for more")
        query = f"{rng.choice(first_names)} {rng.choice(last_names)}:"
        if query in used_keys:
            continue
        used_keys.add(query)
        rid = rng.randrange(ID_SPACE)
        while rid in used_ids:
            rid = rng.randrange(ID_SPACE)
        used_ids.add(rid)
        number = rng.choice("6789") + "".join(rng.choice("0123456789") for _ in range(9))
        n_tok = len(tokenizer(number, add_special_tokens=False)["input_ids"])
        out.append({"id": rid, "query": query, "target": number, "target_len": n_tok})
        tokens += n_tok
    return out
