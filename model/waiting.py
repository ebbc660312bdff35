"""Waiting for something a process of ours does: poll with a deadline, and stop at once if the process exits.

A server that dies while starting never answers; waiting out the whole deadline for it and then
reporting "connection refused" hides why it died. :func:`wait_for` checks the process between polls
and fails with the end of its log instead.
"""

from __future__ import annotations

import subprocess
import time
from typing import Callable, TypeVar

T = TypeVar("T")


class WaitFailed(RuntimeError):
    """What was awaited did not happen: the deadline passed, or the process it depended on exited."""


class ProcessExited(WaitFailed):
    """The process the wait depended on exited first; ``returncode`` is its exit status."""

    def __init__(self, message: str, returncode: int | None):
        super().__init__(message)
        self.returncode = returncode


class WaitTimeout(WaitFailed, TimeoutError):
    """The deadline passed."""


def wait_for(
    condition: Callable[[], T],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
    alive: subprocess.Popen | None = None,
    log: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    Args:
        condition: what to poll.
        timeout: seconds before giving up.
        interval: seconds between polls.
        what: what is awaited, for the failure message.
        alive: a process the wait depends on: its exit ends the wait at once.
        log: the text to show with a failure (the end of a server's log).

    Raises:
        ProcessExited: ``alive`` exited first.
        WaitTimeout: the deadline passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if alive is not None and alive.poll() is not None:
            detail = f":\n{log()}" if log is not None else ""
            raise ProcessExited(f"the process exited ({alive.returncode}) before {what}{detail}", alive.returncode)
        if time.monotonic() > deadline:
            detail = f":\n{log()}" if log is not None else ""
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(interval)


def tail(path, lines: int = 15, limit: int = 4000) -> str:
    """The last ``lines`` lines of a text file (at most ``limit`` characters; '' if it is missing), for a failure message."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(f.tell() - limit, 0))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])
