"""A temporary local Prefect API for commands run without ``PREFECT_API_URL``, that dies with its parent.

Prefect's own temporary server (``SubprocessASGIServer``) is stopped by an ``atexit`` hook, so a
parent killed with SIGKILL leaves it running (and holding its SQLite database) for good. This one
is the same server (``prefect.server.api.server:create_app`` on uvicorn, UI and services off) run
by ``python -m flows.common.temporary_api`` with a watchdog thread: it shuts the server down as soon as
the pipe from its parent reaches end-of-file, which the kernel does when the parent exits however
it exits, or when it finds itself re-parented. The listening socket is bound by the parent and
handed over, so the port is known before the child starts and no other process can take it.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import httpx

LOG = logging.getLogger(__name__)

# How long the server may take to shut down gracefully once its parent is gone, before it exits hard.
SHUTDOWN_GRACE_S = 10.0
# How often the watchdog also checks that its parent is still its parent (the pipe wakes it at once).
PARENT_POLL_S = 1.0


# Prefect's default start-up limit for its temporary server is 20 s; it takes 11-23 s on an idle
# 2-core machine, more on a busy one.
DEFAULT_STARTUP_TIMEOUT_S = 120.0


@contextmanager
def prefect_api(startup_timeout_s: float | None = None) -> Iterator[str | None]:
    """The Prefect API the block's flows talk to: the configured one, or a temporary one for the block.

    Args:
        startup_timeout_s: how long a temporary server may take to answer; default
            ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` if set, else 120 s.

    Yields:
        The API URL (None when none is configured and ``PREFECT_SERVER_ALLOW_EPHEMERAL_MODE`` is
        off: the flow then fails with Prefect's own message). A temporary one is set as ``PREFECT_API_URL`` (environment and Prefect's
        global settings) while the block runs; afterwards Prefect's queued events and logs are
        sent and the server stops.
    """
    from prefect.context import refresh_global_settings_context
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    configured = PREFECT_API_URL.value()
    if configured or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        # Configured; or temporary servers are turned off, and Prefect's own error says to set one.
        yield configured
        return
    if startup_timeout_s is None:
        startup_timeout_s = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", DEFAULT_STARTUP_TIMEOUT_S))
    server = TemporaryPrefectAPI.start(startup_timeout_s)
    os.environ["PREFECT_API_URL"] = server.api_url
    refresh_global_settings_context()
    try:
        yield server.api_url
    finally:
        _drain_prefect_workers()
        os.environ.pop("PREFECT_API_URL", None)
        refresh_global_settings_context()
        server.stop()


def _drain_prefect_workers(timeout_s: float = 10.0) -> None:
    """Send what Prefect still queues for the API (events, logs) before the API goes away."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    EventsWorker.drain_all(timeout=timeout_s)
    APILogWorker.drain_all(timeout=timeout_s)


class TemporaryPrefectAPI:
    """A Prefect API server process on a loopback port, watching its parent.

    Use :meth:`start`; :meth:`stop` ends it (it also ends by itself when this process dies).
    """

    def __init__(self, process: subprocess.Popen, port: int, lifeline: int, log):
        self.process = process
        self.port = port
        self._lifeline = lifeline  # our end of the pipe: closing it (or dying) tells the server to stop
        self._log = log

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @classmethod
    def start(cls, timeout_s: float = 120.0) -> "TemporaryPrefectAPI":
        """Start the server and wait until ``/api/health`` answers.

        Raises:
            RuntimeError: it exited or did not answer within ``timeout_s`` (with its output).
        """
        from prefect.settings import get_current_settings

        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        watch_end, lifeline = os.pipe()  # non-inheritable: only the server gets watch_end
        env = {
            **os.environ,
            **get_current_settings().to_environment_variables(exclude_unset=True),
            # as Prefect's own temporary server: no UI, no background services
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
        }
        env.pop("PREFECT_API_URL", None)
        argv = [sys.executable, "-m", "flows.common.temporary_api", "--listen-fd", str(listener.fileno()),
                "--watch-fd", str(watch_end), "--parent-pid", str(os.getpid())]  # fmt: skip
        log = tempfile.TemporaryFile()  # its output, read if it fails to start
        try:
            process = subprocess.Popen(argv, env=env, pass_fds=(listener.fileno(), watch_end),
                                       stdout=log, stderr=subprocess.STDOUT)
        finally:
            listener.close()
            os.close(watch_end)
        server = cls(process, port, lifeline, log)
        try:
            server._wait_healthy(timeout_s)
        except BaseException:
            server.stop()
            raise
        _announce(f"started a temporary Prefect API at {server.api_url} (pid {process.pid}); it stops with this process")
        return server

    def output(self) -> str:
        """What the server printed (the end of it)."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-3000:]

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=5.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the temporary Prefect API exited with status {self.process.returncode} "
                                       f"while starting: {self.output()}")
                try:
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the temporary Prefect API did not answer within {timeout_s:g} s; "
                                       "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or set PREFECT_API_URL "
                                       "to a running server (prefect server start)")
                time.sleep(0.1)

    def stop(self, timeout_s: float = SHUTDOWN_GRACE_S) -> None:
        """Stop the server (SIGTERM: uvicorn's graceful shutdown; SIGKILL after ``timeout_s``)."""
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def _announce(message: str) -> None:
    # On stderr, as Prefect announces its own temporary server (its console logging may not be
    # set up yet when the server starts before the first flow is imported).
    LOG.info(message)
    print(message, file=sys.stderr, flush=True)


# the server process


def watch_parent(watch_fd: int, parent_pid: int, on_gone) -> None:
    """Call ``on_gone(reason)`` once the parent is gone: its pipe end closed, or we were re-parented."""
    while True:
        readable, _, _ = select.select([watch_fd], [], [], PARENT_POLL_S)
        if readable and os.read(watch_fd, 1) == b"":
            on_gone("its parent's pipe closed")
            return
        if os.getppid() != parent_pid:
            on_gone(f"its parent (pid {parent_pid}) is gone")
            return


def _serve(listen_fd: int, watch_fd: int, parent_pid: int) -> None:
    import uvicorn

    config = uvicorn.Config("prefect.server.api.server:create_app", factory=True, log_level="error", lifespan="on")
    server = uvicorn.Server(config)

    def parent_gone(reason: str) -> None:
        print(f"temporary Prefect API (pid {os.getpid()}): {reason}; shutting down", file=sys.stderr, flush=True)
        server.should_exit = True
        time.sleep(SHUTDOWN_GRACE_S)  # a deadline, not a wait for a condition: the exit below ends a stuck shutdown
        os._exit(1)

    threading.Thread(target=watch_parent, args=(watch_fd, parent_pid, parent_gone), name="parent-watchdog", daemon=True).start()
    server.run(sockets=[socket.socket(fileno=listen_fd)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen-fd", type=int, required=True, help="the bound, listening socket to serve on")
    parser.add_argument("--watch-fd", type=int, required=True, help="read end of a pipe only the parent writes to")
    parser.add_argument("--parent-pid", type=int, required=True)
    args = parser.parse_args(argv)
    _serve(args.listen_fd, args.watch_fd, args.parent_pid)


if __name__ == "__main__":
    main()
