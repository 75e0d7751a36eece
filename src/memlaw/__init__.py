"""memlaw: exact parametric memory in LLMs."""

__version__ = "0.1.0"
