"""A command's run of a flow: its log, tracebacks included, goes to a log file; the terminal shows
the same lines without tracebacks unless asked (``--verbose``); a failure is one line naming the file.

A failed flow run makes Prefect log each exception with its traceback (the task's, then the
flow's) before the command prints its own one-line ``Error:``; on a terminal those screens of
frames bury the line that says what to do. They stay in the log file the error line names.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Iterator

LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
MAX_BYTES = 5_000_000  # per file; three older files are kept beside it
BACKUPS = 3


def default_log_file(command: str) -> Path:
    """``<cache dir>/logs/<command>.log`` (``RETROFRESH_CACHE_DIR``, default ``~/.cache/retrofresh``)."""
    from model.contracts.settings import get_settings

    return Path(get_settings().cache_dir) / "logs" / f"{command}.log"


class WithoutTraceback(logging.Formatter):
    """Formats a record as ``inner`` does, leaving out its traceback and stack."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if not (record.exc_info or record.exc_text or record.stack_info):
            return self.inner.format(record)
        # A copy: the other handlers (the log file) get the record with its traceback.
        bare = logging.makeLogRecord(record.__dict__)
        bare.exc_info, bare.exc_text, bare.stack_info = None, None, None
        return self.inner.format(bare)


def _terminal_handlers(root: logging.Logger) -> list[logging.Handler]:
    """The root's console handlers: Prefect's, or a plain stream handler (never a file's)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    return [h for h in root.handlers if isinstance(h, PrefectConsoleHandler) or type(h) is logging.StreamHandler]


@contextmanager
def run_log(path: Path, *, verbose: bool = False) -> Iterator[Path]:
    """Append the block's log to ``path`` (rotated at 5 MB); keep tracebacks off the terminal unless ``verbose``.

    Args:
        path: the log file; its folder is created.
        verbose: leave the terminal's handlers as they are (tracebacks shown).

    Yields:
        ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    replaced = [] if verbose else [(h, h.formatter) for h in _terminal_handlers(root)]
    for terminal, formatter in replaced:
        terminal.setFormatter(WithoutTraceback(formatter))
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
        for terminal, formatter in replaced:
            terminal.setFormatter(formatter)


def flow_result(state):
    """The result of a flow run's final state, or its exception raised (a run that ended otherwise: RuntimeError)."""
    if not state.is_completed():
        state.result()  # raises the flow's cause
        raise RuntimeError(f"the run ended {state.type.value}: {state.message}")
    return state.result()


def failure_message(what: str, error: BaseException, log_file: Path, *, verbose: bool) -> str:
    """The one line a command prints when its flow failed, and where the rest is."""
    shown = "" if verbose else "; --verbose shows them here"
    return f"{what} failed: {error}\n(the run's log, tracebacks included, is in {log_file}{shown})"
