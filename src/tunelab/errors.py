"""Errors that end a command with one line and exit status 2.

A `TunelabError` is a user mistake (bad config, bad data, missing file): the CLI prints its
message alone, never a traceback. Anything else is a bug in tunelab and keeps its traceback.
"""


class TunelabError(Exception):
    """A problem the user can fix; the message says what, where, and how."""


class ConfigError(TunelabError):
    """One or more problems in the configuration, all reported together."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            super().__init__(self.problems[0])
        else:
            # Still one line: the CLI contract is a single line on stderr.
            super().__init__(f"{len(self.problems)} problems in the config: " + "; ".join(self.problems))


class DataError(TunelabError):
    """A problem in the user's data, naming the file and the line or row."""


class TrainingError(TunelabError):
    """Training cannot go on (for example the loss became NaN)."""


class Terminated(BaseException):
    """SIGTERM (`kill`, a job scheduler, a CI timeout), raised in the main thread so that every `finally` and
    `except BaseException` cleanup runs, as Ctrl-C's KeyboardInterrupt does. A BaseException, as that one is:
    nothing that catches errors should swallow it."""
