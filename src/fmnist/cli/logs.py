"""What the `fmnist` command shows of logging: the library's messages plainly, and other libraries'
warnings (Optuna, SQLAlchemy, uvicorn, torch.distributed) as one line each, never with a traceback.

Why: a library that catches an exception often logs it with its traceback before fmnist turns the
same exception into its own line (Optuna does this for every failed trial, a Ctrl-C included). The
terminal would show a traceback above fmnist's one-line message. So, while a command runs:

- a handler on the root logger prints what other libraries log at WARNING or above as
  `fmnist: warning (LOGGER): first line of the message`; their INFO and DEBUG stay silent;
- no record of another library carries its traceback or stack (the exception's type and message
  stay in the line), so the handlers that a library installs itself (torch has its own, on
  stderr) print no traceback either.

Everything is put back when the command ends: a program that called main() keeps its own logging.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

OUTPUT_HANDLER_NAME = "fmnist-cli"
OTHERS_HANDLER_NAME = "fmnist-cli-other-libraries"
OWN_LOGGER = "fmnist"


def is_own(record: logging.LogRecord) -> bool:
    return record.name == OWN_LOGGER or record.name.startswith(OWN_LOGGER + ".")


def first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


class OneLine(logging.Formatter):
    """Another library's record as one line: its level, its logger, its message's first line, and the
    exception it came with (type and message, not the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"fmnist: {record.levelname.lower()} ({record.name}): {first_line(record.getMessage())}"
        caught = getattr(record, "fmnist_caught", None)
        return f"{line} ({caught})" if caught else line


def show_library_logs(stream) -> None:
    """Route the library's INFO messages (data found, epochs, report written) to `stream`, plainly."""
    stop_showing_library_logs()
    logger = logging.getLogger(OWN_LOGGER)
    handler = logging.StreamHandler(stream)
    handler.set_name(OUTPUT_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def stop_showing_library_logs() -> None:
    """Take the CLI's handler off again: a program that called main() keeps its own logging as it was."""
    logger = logging.getLogger(OWN_LOGGER)
    for handler in [handler for handler in logger.handlers if handler.get_name() == OUTPUT_HANDLER_NAME]:
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


class OneLineToStderr(logging.Handler):
    """Writes to whatever sys.stderr is at the time (pytest, and torchrun's quiet ranks, swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


@contextmanager
def other_libraries_in_one_line() -> Iterator[None]:
    """While the command runs: other libraries' warnings as one line on stderr, and no tracebacks."""
    handler = OneLineToStderr()
    handler.set_name(OTHERS_HANDLER_NAME)
    handler.setLevel(logging.WARNING)
    handler.addFilter(lambda record: not is_own(record))  # fmnist's own have their handler
    handler.setFormatter(OneLine())
    root = logging.getLogger()
    root.addHandler(handler)
    make_record = logging.getLogRecordFactory()

    def record_without_traceback(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if not is_own(record):
            if record.exc_info and record.exc_info[1] is not None:
                error = record.exc_info[1]
                record.fmnist_caught = f"{type(error).__name__}: {first_line(str(error))}".rstrip(": ")
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return record

    logging.setLogRecordFactory(record_without_traceback)
    try:
        yield
    finally:
        logging.setLogRecordFactory(make_record)
        root.removeHandler(handler)
