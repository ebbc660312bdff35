"""A small HTTP server for the sample world: one edition at a time, switchable, with a request log.

It answers like a well-behaved site: ETag and Last-Modified on every page, 304 to conditional
requests that match, 404 for unknown paths, HEAD, and keep-alive (HTTP/1.1).
"""

from __future__ import annotations

import email.utils
import logging
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterable
from urllib.parse import urlsplit

from beam_jobs.sample.world import Edition, SampleWorld

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    status: int
    at: float  # time.monotonic()


class SampleSiteServer:
    """Serves ``world.edition(n)`` on host:port in a background thread.

    Args:
        world: the world to serve.
        edition: the edition served first.
        host: interface to bind (loopback by default).
        port: 0 picks a free port.
    """

    def __init__(self, world: SampleWorld, edition: int = 0, *, host: str = "127.0.0.1", port: int = 0):
        self.world = world
        self._edition = world.edition(edition)
        self._lock = threading.Lock()
        self.requests: list[Request] = []
        self._httpd = _QuietServer((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self._httpd.server_address[0]}:{self.port}"

    @property
    def edition(self) -> Edition:
        return self._edition

    def set_edition(self, number: int, *, without: Iterable[str] = ()) -> Edition:
        """Serve another edition from now on (requests in flight finish on the old one).

        Args:
            number: the edition.
            without: paths of pages taken down: they answer 404 and leave the sitemap (links
                to them stay, as on a real site after a removal). The world's edition itself is
                unchanged; ``edition`` is then a copy without them.
        """
        edition = self.world.edition(number)
        if without:
            gone = set(without)
            pages = {path: page for path, page in edition.pages.items() if path not in gone}
            edition = Edition(edition.world, edition.number, pages, edition.facts, edition.changes, edition.news)
        with self._lock:
            self._edition = edition
        LOG.info("sample site %s now serves edition %d%s", self.base_url, number, f" without {sorted(without)}" if without else "")
        return edition

    def requested(self, path: str) -> list[Request]:
        """Requests received for a path (query string ignored)."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def start(self) -> "SampleSiteServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"sample-site-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (the CLI)."""
        try:
            self._httpd.serve_forever()
        finally:
            self._httpd.server_close()

    def __enter__(self) -> "SampleSiteServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _QuietServer(ThreadingHTTPServer):
    """Clients that drop idle keep-alive connections are normal, not tracebacks on stderr."""

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            LOG.debug("client %s dropped the connection", client_address)
            return
        super().handle_error(request, client_address)


def _handler_for(site: SampleSiteServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "TessellateGazette/1.0"
        # Headers and body go out in two writes; with Nagle on, the body waits for the client's
        # delayed ACK (~20-40 ms a page on loopback).
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args) -> None:  # quiet: the request log has it all
            LOG.debug("%s " + format, self.address_string(), *args)

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, *, body: bool) -> None:
            path = urlsplit(self.path).path
            with site._lock:
                edition = site._edition
            host = self.headers.get("Host") or f"127.0.0.1:{site.port}"
            page = edition.page(path, f"http://{host}")
            status = 404 if page is None else page.status
            headers = {}
            payload = b"<html><body><h1>Not found</h1></body></html>"
            content_type = "text/html; charset=utf-8"
            if page is not None:
                payload, content_type = page.body, page.content_type
                if page.status == 200:
                    headers["ETag"] = page.etag
                    if page.lastmod is not None:
                        headers["Last-Modified"] = email.utils.format_datetime(page.lastmod, usegmt=True)
                    if _not_modified(self.headers, page):
                        status, payload = 304, b""
            site._record(Request(self.command, path, dict(self.headers.items()), status, time.monotonic()))
            self.send_response(status)
            if status != 304:
                self.send_header("Content-Type", content_type)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body and payload:
                self.wfile.write(payload)

    return Handler


def _not_modified(headers, page) -> bool:
    """RFC 9110: If-None-Match decides when present; else If-Modified-Since."""
    if_none_match = headers.get("If-None-Match")
    if if_none_match is not None:
        tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
        return page.etag in tags or "*" in tags
    since = headers.get("If-Modified-Since")
    if since and page.lastmod is not None:
        try:
            when = email.utils.parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False
        when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
        return page.lastmod <= when
    return False


def serve(world: SampleWorld, edition: int, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve an edition until interrupted (``retrofresh site serve``)."""
    server = SampleSiteServer(world, edition, host=host, port=port)
    LOG.info("serving edition %d of the sample world (seed %d, size %d) at %s", edition, world.seed, world.size, server.base_url)
    print(f"sample world edition {edition} at {server.base_url}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


def write_edition(world: SampleWorld, edition: int, out_dir, base_url: str) -> int:
    """Write an edition's files (robots.txt, sitemap.xml, feed.xml included) as a static site.

    Args:
        world: the world.
        edition: which edition.
        out_dir: target directory; paths ending in / become index.html.
        base_url: absolute URL prefix for the sitemap, feed and robots.txt.

    Returns:
        The number of files written.
    """
    from pathlib import Path

    out = Path(out_dir)
    data = world.edition(edition)
    written = 0
    for path in [*data.pages, "/robots.txt", "/sitemap.xml", "/feed.xml"]:
        page = data.page(path, base_url)
        target = out / (path.lstrip("/") + ("index.html" if path.endswith("/") else ""))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(page.body)
        written += 1
    return written
