"""PhoneBook name pools: the static first- and last-name lists of Faker's English-language locales.

The reference's keys rarely repeat a first or last name (about 1 200 first and 2 700 last names
over 3 200 records), which needs pools of thousands; a maintained library's lists give them
(about 8 600 first × 5 300 last names) where a hand-written list gave 178 of each. Only Faker's
static data are read, never its random generator, so memlaw's seeded RNG alone decides the
draws. The lists are data: a Faker release that edits them changes every generated PhoneBook,
hence the version bound in pyproject.toml and the fingerprint test in tests/test_data.py.
"""

from __future__ import annotations

import importlib
import re
from functools import lru_cache

from ..errors import MemlawError

LOCALES = ("en", "en_GB", "en_IE", "en_IN", "en_KE", "en_NG", "en_NZ", "en_PK", "en_TH", "en_US")
# Plain ASCII letters only, so keys stay "First Last:" (no O'Brien, Clunies-Ross or accents).
FIRST_NAME = re.compile(r"[A-Z][a-z]+")
LAST_NAME = re.compile(r"[A-Z][a-zA-Z]+")  # McDonald, MacArthur


@lru_cache(maxsize=1)
def name_pools() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(first names, last names): deduplicated and sorted, so the order does not depend on Faker's."""
    first: set[str] = set()
    last: set[str] = set()
    for locale in LOCALES:
        try:
            provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        except ImportError as e:
            raise MemlawError(f"PhoneBook names come from the faker package ({e}); install it: pip install 'faker>=40.63,<41'")
        first.update(name for name in provider.first_names if FIRST_NAME.fullmatch(name))
        last.update(name for name in provider.last_names if LAST_NAME.fullmatch(name))
    return tuple(sorted(first)), tuple(sorted(last))
