"""Errors that are the user's to fix: the CLI prints them as one line and exits with code 2."""


class FmnistError(Exception):
    """A problem with the user's input (data files, options, checkpoints), not a bug in fmnist."""

    exit_code = 2


class DataError(FmnistError):
    """The data set is missing, corrupt or not Fashion-MNIST."""


class ConfigError(FmnistError):
    """An option or config file value is out of range, unknown, or ignored by the chosen settings."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field  # the config field at fault, when there is one


class CheckpointError(FmnistError):
    """A checkpoint or run directory cannot be used."""


def one_line_reason(error: BaseException) -> str:
    """The first line of a library's error message (or its type), short enough for a one-line error."""
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
