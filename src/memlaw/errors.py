"""The one exception type for user errors (bad input, bad config, bad paths)."""


class MemlawError(Exception):
    """A problem with the user's input. The CLI prints it as one line and exits with 2."""


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C, once the last completed epoch's adapter has been saved."""
