"""What one watch poll costs on a big sitemap: a site listing ENTRIES pages, ``max_pages`` MAX_PAGES.

    python -m bench.watch [--quick] [--json]

A loopback site serves one sitemap of ENTRIES URLs (with an ETag, so an unchanged sitemap is a
304); a ``Watcher`` over an empty store polls it POLLS times. The first poll downloads and parses
the sitemap and announces at most MAX_PAGES new URLs; the later ones get a 304 and reuse what they
parsed. Reports wall and CPU seconds (this process: the poll and the site's thread) per poll.

Writes bench/results/watch.json (watch-quick.json with --quick: first_poll_cpu_s, steady_poll_cpu_s (median of the later polls),
announced, load_avg_1m, ...).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.common import RESULTS, machine, write_result

# knobs
ENTRIES = 100_000  # URLs the sitemap lists
MAX_PAGES = 50  # the site's max_pages
POLLS = 5  # polls measured (the first parses, the rest get a 304)
QUICK = dict(ENTRIES=20_000, POLLS=4)



def serve_sitemap(entries: int) -> ThreadingHTTPServer:
    """A loopback server of /sitemap.xml (ETag, 304 on If-None-Match) and an empty robots.txt."""
    items = "".join(f"<url><loc>/p{i}.html</loc><lastmod>2024-01-01</lastmod></url>" for i in range(entries))
    body = f'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{items}</urlset>'.encode()
    etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path != "/sitemap.xml":
                status, payload = 404, b""
            elif self.headers.get("If-None-Match") == etag:
                status, payload = 304, b""
            else:
                status, payload = 200, body
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("ETag", etag)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"a smaller sitemap ({QUICK['ENTRIES']} entries)")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    knobs = dict(ENTRIES=ENTRIES, MAX_PAGES=MAX_PAGES, POLLS=POLLS) | (QUICK if args.quick else {})

    from beam_jobs.sources import SourcesConfig
    from flows.watch import Watcher

    server = serve_sitemap(knobs["ENTRIES"])
    base = f"http://127.0.0.1:{server.server_address[1]}"
    config = SourcesConfig.model_validate({"fetch": {"crawl_delay_s": 0}, "sources": [
        {"kind": "site", "name": "big", "start_urls": [base + "/"], "sitemaps": [base + "/sitemap.xml"],
         "allow_networks": ["127.0.0.0/8"], "max_pages": knobs["MAX_PAGES"]}]})
    polls = []
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as tmp:
        watcher = Watcher(config, str(Path(tmp) / "store"), interval_s=0.001, announce=lambda a: None)
        try:
            for _ in range(knobs["POLLS"]):
                time.sleep(0.01)  # the source is due again
                wall, cpu = time.perf_counter(), time.process_time()
                found = watcher.poll()
                polls.append({"wall_s": round(time.perf_counter() - wall, 3), "cpu_s": round(time.process_time() - cpu, 3),
                              "announced": sum(len(a.urls) for a in found)})
        finally:
            watcher.close()
            server.shutdown()
    result = {
        "bench": "watch", "quick": args.quick, "knobs": knobs, "polls": polls,
        "first_poll_cpu_s": polls[0]["cpu_s"], "steady_poll_cpu_s": statistics.median(p["cpu_s"] for p in polls[1:]),
        "announced": polls[0]["announced"],
        "machine": machine(),
    }
    write_result(RESULTS / ("watch-quick.json" if args.quick else "watch.json"), result, as_json=args.json)


if __name__ == "__main__":
    main()
