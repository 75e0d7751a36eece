"""memlaw: exact parametric memory in LLMs.

The Python workflow: ``memlaw.memorize(records, rank=...)`` returns a :class:`memlaw.Memory` with
``.ask()``, ``.add()`` and ``.save()`` (docs: README, "Remember your own facts").
"""

__version__ = "0.1.0"

__all__ = ["Memory", "memorize"]


def __getattr__(name: str):
    # Imported on first use: `memlaw --help` and light imports do not load torch.
    if name in __all__:
        from . import memory

        return getattr(memory, name)
    raise AttributeError(f"module 'memlaw' has no attribute {name!r}")
