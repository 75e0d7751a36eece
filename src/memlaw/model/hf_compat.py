"""The one place that knows what transformers calls the key/value cache.

transformers 5.x renamed the ``past_key_values`` argument of model forwards, decoder layers
and mask builders to ``cache`` (and the output field with it); the old name still works
but warns on every call until it is removed. memlaw passes whichever name the installed
version takes, so it runs silently on the versions it is tested with (README: Development)
and keeps working on older ones.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any, Callable


@lru_cache(maxsize=None)
def _cache_name(fn: Callable) -> str:
    return "cache" if "cache" in inspect.signature(fn).parameters else "past_key_values"


def cache_kwarg(fn: Callable, value: Any) -> dict[str, Any]:
    """``{name: value}`` for the cache argument of `fn` (a forward method or a mask builder)."""
    return {_cache_name(fn): value}


def forward_of(module: Any) -> Callable:
    """The class-level forward of a module (or of the model under a PeftModel), for cache_kwarg."""
    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    return type(base).forward


def returned_cache(output: Any) -> Any:
    """The key/value cache a forward returned."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
