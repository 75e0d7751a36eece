"""The exception types the CLI turns into exit codes."""


class MemlawError(ValueError):
    """A problem with the user's input (bad records, config, paths). The CLI prints it as one line and
    exits with 2; it is a ValueError so that callers of the Python API can catch the usual type."""


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C, once the last completed epoch's adapter has been saved."""
