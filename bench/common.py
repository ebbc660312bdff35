"""What every benchmark repeats: a subprocess it serves and stops, the machine it ran on, its result JSON.

Not a benchmark itself (``python -m bench.common`` measures nothing); the scripts beside it import it.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from model.server.ports import free_port

ROOT = Path(__file__).resolve().parent.parent  # the repository: subprocesses run `python -m flows.cli` from here
RESULTS = Path(__file__).resolve().parent / "results"
STOP_TIMEOUT_S = 30.0  # a server drains its requests on SIGINT; after this it is killed


def log(message: str) -> None:
    """A progress line on stderr (timestamped), so that stdout stays the result JSON alone."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def start(cmd: Sequence[str], *, env: dict | None = None, logfile: Path | None = None) -> subprocess.Popen:
    """Start a subprocess in its own process group (what it starts in turn is stopped with it).

    Args:
        cmd: the command line.
        env: its environment (default: this process's).
        logfile: where its stdout and stderr go (default: this process's stderr and stdout).
    """
    output = open(logfile, "w") if logfile is not None else None  # noqa: SIM115 - the child holds it open
    try:
        return subprocess.Popen(list(cmd), cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT if output else None,
                                start_new_session=True)
    finally:
        if output is not None:
            output.close()  # the child has its own copy of the descriptor


def _signal(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:  # the group is gone already
        pass


def stop(*processes: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop what :func:`start` started: SIGINT to each process group at once (they drain side by side),
    then SIGKILL to any not gone within ``timeout``."""
    running = [p for p in processes if p.poll() is None]
    for process in running:
        _signal(process, signal.SIGINT)
    for process in running:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal(process, signal.SIGKILL)
            process.wait()


def serve(checkpoint: Path, store: str | Path, cache_dir: Path, *, reload_interval: float, args: Sequence[str] = (),
          env: dict | None = None, logfile: Path | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``retrofresh serve`` on a free loopback port (stop it with :func:`stop`).

    Args:
        checkpoint: the model checkpoint folder.
        store: the index store (a folder or gs:// URI).
        cache_dir: the server's local copy of the versions it loads.
        reload_interval: seconds between its checks of CURRENT.
        args: more command-line options (``--precision bf16``, ...).
        env: its environment (default: this process's).
        logfile: where its output goes (default: this process's).

    Returns:
        (the process, its base URL).
    """
    port = free_port()
    cmd = [sys.executable, "-m", "flows.cli", "serve", "--checkpoint", str(checkpoint), "--store", str(store),
           "--host", "127.0.0.1", "--port", str(port), "--cache-dir", str(cache_dir),
           "--reload-interval", str(reload_interval), "--log-level", "warning", *args]  # fmt: skip
    return start(cmd, env=env, logfile=logfile), f"http://127.0.0.1:{port}"


def wait_ready(process: subprocess.Popen, client, logfile: Path, *, timeout: float = 300.0) -> None:
    """Wait until a server :func:`serve` started answers ``/readyz``; if it exits first, fail at once with
    the end of its log (polling a dead server waits out ``timeout`` and then says only "connection refused").

    Args:
        process: the server's process.
        client: a ``model.client.RetroClient`` on its URL.
        logfile: the server's output (``serve(..., logfile=)``).
        timeout: seconds to wait at most.

    Raises:
        model.waiting.ProcessExited: the server exited while starting.
        model.waiting.WaitTimeout: not ready within ``timeout``.
    """
    from model.client import RetroError
    from model.waiting import tail, wait_for

    def ready() -> bool:
        try:
            return client.ready().ready
        except RetroError:  # not listening yet
            return False

    wait_for(ready, timeout=timeout, interval=0.2, what=f"the server at {client.url} was ready (its log, {logfile})", alive=process,
             log=lambda: tail(logfile, lines=40))


def machine(**extra) -> dict:
    """The machine a result was measured on (shared machines: the load average says how busy), plus ``extra``."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m": round(os.getloadavg()[0], 2)} | extra


def write_result(path: Path, result: dict, *, as_json: bool, summary: str | None = None, indent: int = 2) -> None:
    """Write a benchmark's result to ``path`` and print it: one JSON object on stdout.

    Args:
        path: the result file (under bench/results/, or the script's --result/--out).
        result: the result.
        as_json: --json: stdout gets the object on one line and nothing else.
        summary: a human line for stderr, left out with ``as_json``.
        indent: the file's (and, without ``as_json``, stdout's) indentation.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=indent) + "\n")
    if summary and not as_json:
        log(summary)
    print(json.dumps(result) if as_json else json.dumps(result, indent=indent), flush=True)
