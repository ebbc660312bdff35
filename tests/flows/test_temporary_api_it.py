"""``retrofresh refresh`` without ``PREFECT_API_URL`` starts a temporary Prefect API that dies with it, even by SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.fixtures.waiting import wait_for
from tests.flows.support import write_sources

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ANNOUNCED = re.compile(r"started a temporary Prefect API at (http://127\.0\.0\.1:\d+/api) \(pid (\d+)\)")


class HeldSite:
    """A loopback site that holds every request until released: the refresh cannot finish on its own."""

    def __init__(self):
        self.requested, self.release = threading.Event(), threading.Event()
        site = self

        class Hold(BaseHTTPRequestHandler):
            def do_GET(self):
                site.requested.set()
                site.release.wait(600)
                self.send_error(503)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Hold)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def process_state(pid: int) -> str | None:
    """The process's state letter from /proc (``Z``: exited, not yet reaped), or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if parent_of(int(entry)) == pid and process_state(int(entry)) not in (None, "Z"):
                    found.append(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


def read_lines(stream, into: list[str]) -> None:
    for line in stream:
        into.append(line)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_a_refresh_stops_its_temporary_prefect_api(tmp_path):
    """Killed mid-crawl (its site holds the request), the refresh's API server exits within seconds."""
    site = HeldSite()
    sources = write_sources(tmp_path / "sources.yaml", site.url, timeout_s=600, deadline_s=600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1")
    victim = subprocess.Popen([sys.executable, "-m", "flows.cli", "refresh", "--sources", str(sources), "--store", str(tmp_path / "store")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log: list[str] = []
    threading.Thread(target=read_lines, args=(victim.stdout, log), daemon=True).start()
    started: list[int] = []
    try:
        wait_for(site.requested.is_set, timeout=300, what="the refresh's first request", alive=victim, log=lambda: "".join(log[-60:]))
        started = children_of(victim.pid)  # the flow is running, so its API is up: that is all it started
        assert started, "".join(log[-60:])

        victim.send_signal(signal.SIGKILL)  # no finally block, no atexit hook runs in the refresh
        victim.wait()
        wait_for(lambda: all(process_state(pid) in (None, "Z") for pid in started), timeout=30,
                 what=f"the processes the refresh started ({started}) to exit", log=lambda: "".join(log[-60:]))
        announced = [m for m in map(ANNOUNCED.search, log) if m]  # the user was told where it ran
        assert announced and int(announced[0].group(2)) in started, "".join(log[-60:])
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{announced[0].group(1)}/health", timeout=5)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
        for pid in started:
            if process_state(pid) not in (None, "Z"):
                os.kill(pid, signal.SIGKILL)
        site.close()
