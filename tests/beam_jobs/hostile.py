"""A deliberately badly behaved HTTP site for the fetcher and ingest tests (127.0.0.1, own thread).

Routes (``HOSTILE_ROUTES``): a binary file served as HTML, a 50 MB page (declared, and streamed
without a length), a redirect loop, a page that stalls, a page that fails with 500 once then
works, malformed HTML, Latin-1 text without a charset, a redirect to the cloud metadata address,
a robots.txt that disallows /secret/ and asks for a crawl delay, and an ETag'd page for 304s.
"""

from __future__ import annotations

import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FIFTY_MB = 50 * 1024 * 1024
LATIN1_TEXT = "Le café de la gare sert un crème brûlée réputé dans toute la région, préparé chaque matin par Zoë."
METADATA_URL = "http://169.254.169.254/latest/meta-data/"
PRIVATE_URLS = {  # /to-private-<n> redirects to each: a 10/8 intranet address, spelt three ways
    "/to-private-1": "http://10.0.0.1/admin",
    "/to-private-2": "http://[::ffff:10.0.0.1]/admin",
    "/to-private-3": "http://[64:ff9b::a00:1]/admin",
}

PAGES = {
    "/": None,  # the index: links to every route (built below)
    "/ok.html": "<html><head><title>Plain page</title></head><body><article><h1>Plain page</h1><p>{}</p></article></body></html>",
    "/malformed.html": "<html><head><title>Broken markup</title><body><div><p>Unclosed paragraphs <b>everywhere<p>{}<table><tr><td>cell</div></b></i></span>",
    "/etag.html": "<html><head><title>Tagged page</title></head><body><article><h1>Tagged page</h1><p>{}</p></article></body></html>",
    "/secret/plans.html": "<html><body><p>Secret plans that no crawler may read.</p></body></html>",
}
FILLER = (
    "This paragraph is ordinary prose of a sensible length, written so that the extractor has a main "
    "text to find and the chunker has more than a handful of tokens to cut into pieces. "
) * 3

ROUTES = [
    "/ok.html", "/binary.html", "/huge-declared.html", "/huge-streamed.html", "/loop-a", "/stall.html",
    "/flaky.html", "/malformed.html", "/latin1.txt", "/to-metadata", "/secret/plans.html", "/etag.html",
    "/image.png", "/missing.html", *PRIVATE_URLS,
]  # fmt: skip


class HostileSite:
    """Serves the hostile routes; ``requests`` logs (path, time) of everything received.

    Args:
        stall_s: how long /stall.html waits before answering.
        crawl_delay: the Crawl-delay robots.txt asks for (None: no such line).
    """

    def __init__(self, *, stall_s: float = 5.0, crawl_delay: float | None = None, robots_status: int = 200):
        self.stall_s = stall_s
        self.crawl_delay = crawl_delay
        self.robots_status = robots_status
        self.busy_hits = 0
        self.requests: list[tuple[str, float]] = []
        self.flaky_hits = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def paths(self) -> list[str]:
        with self._lock:
            return [p for p, _ in self.requests]

    def __enter__(self) -> "HostileSite":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self):
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args) -> None:
                pass

            def send(self, status: int, body: bytes, content_type: str = "text/html; charset=utf-8", headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                with site._lock:
                    site.requests.append((path, time.monotonic()))
                try:
                    self.route(path)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (caps, timeouts): that is the point

            def route(self, path: str) -> None:
                if path == "/robots.txt" and site.robots_status != 200:
                    return self.send(site.robots_status, b"unavailable", "text/plain")
                if path == "/robots.txt":
                    delay = f"Crawl-delay: {site.crawl_delay}\n" if site.crawl_delay is not None else ""
                    return self.send(200, f"User-agent: *\nDisallow: /secret/\n{delay}".encode(), "text/plain")
                if path == "/":
                    links = "".join(f'<a href="{r}">{r}</a> ' for r in ROUTES) + f'<a href="{METADATA_URL}">metadata</a>'
                    return self.send(200, f"<html><head><title>Hostile index</title></head><body><p>{FILLER}</p><p>{links}</p></body></html>".encode())
                if path in ("/ok.html", "/malformed.html", "/secret/plans.html"):
                    return self.send(200, PAGES[path].format(FILLER).encode())
                if path == "/etag.html":
                    tag = '"v1"'
                    if self.headers.get("If-None-Match") == tag:
                        self.send_response(304)
                        self.send_header("ETag", tag)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    return self.send(200, PAGES[path].format(FILLER).encode(), headers={"ETag": tag})
                if path == "/binary.html":
                    return self.send(200, os.urandom(64 * 1024))
                if path == "/huge-declared.html":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(FIFTY_MB))
                    self.end_headers()
                    block = b"<p>" + b"x" * 65530 + b"</p>"
                    for _ in range(FIFTY_MB // len(block)):
                        self.wfile.write(block)
                    return
                if path == "/huge-streamed.html":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Connection", "close")  # no length: the body ends when we close
                    self.end_headers()
                    block = b"<p>" + b"y" * 65530 + b"</p>"
                    for _ in range(FIFTY_MB // len(block)):
                        self.wfile.write(block)
                    self.close_connection = True
                    return
                if path == "/loop-a":
                    return self.send(302, b"", headers={"Location": "/loop-b"})
                if path == "/loop-b":
                    return self.send(302, b"", headers={"Location": "/loop-a"})
                if path == "/to-metadata":
                    return self.send(302, b"", headers={"Location": METADATA_URL})
                if path in PRIVATE_URLS:
                    return self.send(302, b"", headers={"Location": PRIVATE_URLS[path]})
                if path == "/stall.html":
                    time.sleep(site.stall_s)
                    return self.send(200, b"<html><body><p>too late</p></body></html>")
                if path == "/flaky.html":
                    with site._lock:
                        site.flaky_hits += 1
                        first = site.flaky_hits == 1
                    if first:
                        return self.send(500, b"<html><body>try again</body></html>")
                    body = f"<html><head><title>Flaky page</title></head><body><article><h1>Flaky page</h1><p>It works the second time. {FILLER}</p></article></body></html>"
                    return self.send(200, body.encode())
                if path == "/busy.html":
                    with site._lock:
                        site.busy_hits += 1
                        first = site.busy_hits == 1
                    if first:
                        return self.send(429, b"slow down", "text/plain", headers={"Retry-After": "2"})
                    return self.send(200, PAGES["/ok.html"].format(FILLER).encode())
                if path == "/latin1.txt":
                    return self.send(200, (LATIN1_TEXT + "\n\n" + FILLER).encode("latin-1"), "text/plain")
                if path == "/image.png":
                    return self.send(200, b"\x89PNG\r\n\x1a\n" + os.urandom(1024), "image/png")
                return self.send(404, b"<html><body>not here</body></html>")

        return Handler
