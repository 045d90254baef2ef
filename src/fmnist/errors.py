"""Errors that are the user's to fix: the CLI prints them as one line and exits with code 2."""


class FmnistError(Exception):
    """A problem with the user's input (data files, options, checkpoints), not a bug in fmnist."""

    exit_code = 2


class DataError(FmnistError):
    """The data set is missing, corrupt or not Fashion-MNIST."""


class ConfigError(FmnistError, ValueError):
    """An option or an argument is out of range, unknown, or ignored by the chosen settings.

    Also a ValueError, so that code written for Python's own argument errors (`except ValueError`)
    keeps catching it. `field` names the option or argument at fault, when there is one; `value` and
    `rule` are the value it was given and what was wrong with it, when the check said so.
    """

    def __init__(self, message: str, field: str | None = None, *, value=None, rule: str | None = None):
        super().__init__(message)
        self.field = field
        self.value = value
        self.rule = rule


class ArgumentTypeError(ConfigError, TypeError):
    """An argument of the wrong type: a ConfigError that is also a TypeError, as Python's own would be."""


class CheckpointError(FmnistError):
    """A checkpoint or run directory cannot be used."""


def one_line_reason(error: BaseException) -> str:
    """The first line of a library's error message (or its type), short enough for a one-line error."""
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
