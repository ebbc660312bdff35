"""Polite, defensive HTTP: robots.txt, per-host delay, conditional GET, retries, size and type caps.

One :class:`Fetcher` serves one crawl (one source on one worker). Every request goes through the
address guard (:mod:`beam_jobs.netguard`), waits its turn for its host, and ends as a
:class:`~beam_jobs.types.FetchResult` whose ``outcome`` and ``reason`` are counted by the job; no
input makes it raise.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import urlsplit

import httpcore
import httpx
from protego import Protego

from beam_jobs.metrics import count
from beam_jobs.netguard import AddressPolicy, BlockedAddress, GuardedTransport, resolve_allowed
from beam_jobs.sources import FetchSettings
from beam_jobs.types import FAILED, FETCHED, GONE, NOT_MODIFIED, ROBOTS_BLOCKED, FetchResult
from model.contracts.clock import as_utc, utcnow
from model.contracts.ids import web_url

LOG = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
ROBOTS_MAX_BYTES = 512_000  # RFC 9309 asks crawlers to parse at least 500 KiB


def parse_http_date(value: str | None) -> datetime | None:
    """An HTTP date header as an aware UTC datetime; None when absent or unparsable."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    return as_utc(parsed)


def format_http_date(value: datetime) -> str:
    """An aware datetime as an HTTP date (If-Modified-Since, Last-Modified)."""
    return email.utils.format_datetime(value.astimezone(timezone.utc), usegmt=True)


@dataclass
class _Response:
    """A finished request: status, headers and a capped body, or why there is none."""

    url: str  # where the request chain ended
    status: int | None = None
    headers: httpx.Headers = field(default_factory=httpx.Headers)
    body: bytes | None = None
    failure: str | None = None  # failed reason when there is no usable response
    blocked: bool = False  # robots.txt disallowed a URL on the way


class _TooLarge(Exception):
    pass


class _Deadline(Exception):
    pass


class Fetcher:
    """HTTP client for one crawl: robots cache, per-host pacing, retries, caps and the guard.

    Args:
        settings: the run's fetch policy.
        policy: the addresses this crawl may connect to (default: public ones only); checked
            before every hop and again at connect time.
        crawl_delay_s: least gap between two requests to one host; robots.txt may raise it.
        sleep: how to wait (tests of pacing may record it).
    """

    def __init__(self, settings: FetchSettings, *, policy: AddressPolicy | None = None, crawl_delay_s: float | None = None, sleep=time.sleep):
        self.settings = settings
        self.crawl_delay_s = settings.crawl_delay_s if crawl_delay_s is None else crawl_delay_s
        self.policy = policy or AddressPolicy()
        self._sleep = sleep
        self._client = httpx.Client(
            transport=GuardedTransport(policy=self.policy),
            headers={"User-Agent": settings.user_agent},
            timeout=httpx.Timeout(settings.timeout_s),
            follow_redirects=False,  # followed by hand: each hop is checked against robots.txt
            trust_env=False,
        )
        self._robots: dict[str, Protego | None] = {}  # origin -> rules; None: robots unreachable
        self._last_request: dict[str, float] = {}  # host -> monotonic time its last request ended
        self.requests = 0
        self.retries = 0

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ robots and pacing

    def robots(self, url: str) -> Protego | None:
        """The robots.txt rules for a URL's origin (fetched once); None when unreachable."""
        origin = _origin(url)
        if origin not in self._robots:
            self._robots[origin] = self._load_robots(origin)
        return self._robots[origin]

    def allowed(self, url: str) -> bool | None:
        """Whether robots.txt lets this crawler fetch url; None when robots.txt is unreachable."""
        rules = self.robots(url)
        if rules is None:
            return None
        return rules.can_fetch(url, self.settings.user_agent)

    def sitemaps(self, url: str) -> list[str]:
        """Sitemap URLs that the origin's robots.txt lists (malformed ones dropped and counted)."""
        rules = self.robots(url)
        listed = list(rules.sitemaps) if rules is not None else []
        found = [u for u in (web_url(s, url) for s in listed) if u is not None]
        if len(found) < len(listed):
            count("malformed_urls", len(listed) - len(found))
            LOG.warning("robots.txt of %s: dropped %d malformed Sitemap URLs", _origin(url), len(listed) - len(found))
        return found

    def _load_robots(self, origin: str) -> Protego | None:
        response = self._get(f"{origin}/robots.txt", {}, accept=None, max_bytes=ROBOTS_MAX_BYTES, check_robots=False)
        if response.failure is not None or response.status is None or response.status >= 500 or response.status == 429:
            # RFC 9309: an unreachable robots.txt means "assume complete disallow".
            LOG.warning("robots.txt of %s unreachable (%s); not crawling it", origin, response.failure or response.status)
            return None
        if response.status >= 400:
            return Protego.parse("")  # 4xx: no rules, everything allowed
        text = (response.body or b"").decode("utf-8", errors="replace")
        return Protego.parse(text)

    def _delay(self, host: str, url: str) -> float:
        delay = self.crawl_delay_s
        rules = self._robots.get(_origin(url))
        if rules is not None:
            robots_delay = rules.crawl_delay(self.settings.user_agent)
            if robots_delay:
                delay = max(delay, min(float(robots_delay), self.settings.max_crawl_delay_s))
        return delay

    def _wait_turn(self, url: str) -> None:
        # The gap is computed when the next request is due, so a Crawl-delay learnt from the
        # robots.txt just fetched already spaces the request that follows it.
        host = urlsplit(url).netloc.lower()
        last = self._last_request.get(host)
        if last is not None:
            wait = last + self._delay(host, url) - time.monotonic()
            if wait > 0:
                self._sleep(wait)
        self._last_request[host] = time.monotonic()

    # ------------------------------------------------------------------ requests

    def fetch(
        self,
        url: str,
        *,
        source: str,
        etag: str | None = None,
        last_modified: str | None = None,
        accept: tuple[str, ...] | None = (),
        max_bytes: int | None = None,
    ) -> FetchResult:
        """GET one document: robots-checked, paced, conditional, retried, capped.

        Args:
            url: the document's URL (its identity, even when redirected).
            source: the source name, carried into the result.
            etag: validator from the parent ledger (sent as If-None-Match).
            last_modified: the Last-Modified header stored in the parent ledger (sent back
                verbatim as If-Modified-Since).
            accept: allowed media types; () means the run's content-type allowlist, None any.
            max_bytes: body cap; None means the run's max_bytes.

        Returns:
            A FetchResult: FETCHED with a body, NOT_MODIFIED, GONE, ROBOTS_BLOCKED or FAILED
            with a reason (blocked_address, timeout, too_large, content_type, redirects, ...).
        """
        headers = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        accept = self.settings.content_types if accept == () else accept
        fetched_at = utcnow()
        response = self._get(url, headers, accept=accept, max_bytes=max_bytes or self.settings.max_bytes, check_robots=True)
        base = FetchResult(url=url, source=source, outcome=FAILED, status=response.status, final_url=response.url, fetched_at=fetched_at)
        if response.blocked:
            return base.with_outcome(ROBOTS_BLOCKED, "robots_txt")
        if response.failure is not None:
            return base.with_outcome(FAILED, response.failure)
        status = response.status
        if status == 304:
            return FetchResult(
                url=url, source=source, outcome=NOT_MODIFIED, status=304, final_url=response.url,
                etag=response.headers.get("etag") or etag,
                last_modified=response.headers.get("last-modified") or last_modified,
                fetched_at=fetched_at,
            )  # fmt: skip
        if status in (404, 410):
            return base.with_outcome(GONE, f"http_{status}")
        if status != 200:
            return base.with_outcome(FAILED, "http_5xx" if status >= 500 else ("http_429" if status == 429 else "http_status"))
        media_type, charset = _content_type(response.headers.get("content-type"))
        return FetchResult(
            url=url, source=source, outcome=FETCHED, status=200, final_url=response.url,
            kind="text" if media_type == "text/plain" else "markdown" if media_type == "text/markdown" else "html",
            content_type=media_type, charset=charset, body=response.body,
            etag=response.headers.get("etag"),
            last_modified=response.headers.get("last-modified"),
            fetched_at=fetched_at,
        )  # fmt: skip

    def _get(self, url: str, headers: dict, *, accept: tuple[str, ...] | None, max_bytes: int, check_robots: bool) -> _Response:
        """Follow redirects by hand (at most max_redirects), checking robots.txt on every hop."""
        seen = set()
        current = url
        for _ in range(self.settings.max_redirects + 1):
            if web_url(current) is None:  # malformed, or not http(s): nothing below may parse it
                scheme = current.partition(":")[0].strip().lower()
                return _Response(current, failure="bad_url" if scheme in ("http", "https") else "bad_scheme")
            if current in seen:
                return _Response(current, failure="redirect_loop")
            seen.add(current)
            failure = self._address_failure(current)
            if failure is not None:  # before robots.txt: a refused host gets no request at all
                return _Response(current, failure=failure)
            if check_robots:
                allowed = self.allowed(current)
                if allowed is None:
                    return _Response(current, failure="robots_unreachable")
                if not allowed:
                    return _Response(current, blocked=True)
            response = self._request(current, headers, accept=accept, max_bytes=max_bytes)
            if response.failure is None and response.status in REDIRECT_STATUSES:
                location = response.headers.get("location")
                if not location:
                    return _Response(current, status=response.status, failure="redirect_without_location")
                current = web_url(location, current) or location.strip()  # a malformed one fails on the next hop
                continue
            return response
        return _Response(current, failure="too_many_redirects")

    def _address_failure(self, url: str) -> str | None:
        """'blocked_address' when url's host resolves to an address the source may not reach.

        The transport checks again at connect time (and connects to the checked address); this
        early check only keeps robots.txt requests and retries away from refused hosts.
        """
        parts = urlsplit(url)
        try:
            resolve_allowed(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80), policy=self.policy)
        except BlockedAddress as exc:
            LOG.info("refused %s: %s", url, exc)
            return "blocked_address"
        except (httpx.HTTPError, httpcore.ConnectError, ValueError, UnicodeError):
            return None  # unresolvable now: let the request fail (and retry) as a connection error
        return None

    def _request(self, url: str, headers: dict, *, accept: tuple[str, ...] | None, max_bytes: int) -> _Response:
        """One URL, retried with exponential backoff on 429, 5xx, timeouts and broken connections."""
        failure = "unknown"
        for attempt in range(self.settings.retries + 1):
            if attempt:
                self.retries += 1
            self._wait_turn(url)
            self.requests += 1
            retry_after = None
            try:
                with self._client.stream("GET", url, headers=headers) as r:
                    if r.status_code in RETRY_STATUSES:
                        failure = "http_429" if r.status_code == 429 else "http_5xx"
                        retry_after = _retry_after(r.headers.get("retry-after"))
                        if attempt == self.settings.retries:
                            return _Response(url, status=r.status_code, headers=r.headers)
                    elif r.status_code != 200:
                        return _Response(url, status=r.status_code, headers=r.headers)
                    else:
                        media_type, _ = _content_type(r.headers.get("content-type"))
                        if accept is not None and media_type not in accept:
                            return _Response(url, status=200, headers=r.headers, failure="content_type")
                        body = self._read_capped(r, max_bytes)
                        return _Response(url, status=200, headers=r.headers, body=body)
            except BlockedAddress as exc:
                LOG.info("refused %s: %s", url, exc)
                return _Response(url, failure="blocked_address")
            except _TooLarge:
                return _Response(url, failure="too_large")
            except (httpx.TimeoutException, _Deadline):
                failure = "timeout"
            except httpx.TransportError as exc:  # refused, reset, malformed response
                LOG.debug("transport error on %s: %s", url, exc)
                failure = "connection"
            except httpx.InvalidURL:
                return _Response(url, failure="bad_url")
            finally:
                # The gap runs from the end of a request: a slow connect or body must not eat into
                # the pause the next request owes the host.
                self._last_request[urlsplit(url).netloc.lower()] = time.monotonic()
            if attempt < self.settings.retries:
                self._sleep(self._backoff(attempt, retry_after))
        return _Response(url, failure=failure)

    def _read_capped(self, response: httpx.Response, max_bytes: int) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise _TooLarge()  # refuse before reading a byte
        deadline = time.monotonic() + self.settings.deadline_s
        parts, size = [], 0
        for part in response.iter_bytes():
            size += len(part)
            if size > max_bytes:
                raise _TooLarge()
            if time.monotonic() > deadline:  # a server dripping bytes defeats the read timeout
                raise _Deadline()
            parts.append(part)
        return b"".join(parts)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.settings.max_backoff_s)
        delay = self.settings.backoff_s * (2**attempt)
        return min(delay * (1 + 0.25 * random.random()), self.settings.max_backoff_s)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _content_type(value: str | None) -> tuple[str | None, str | None]:
    """'text/html; charset=ISO-8859-1' -> ('text/html', 'iso-8859-1')."""
    if not value:
        return None, None
    media_type, _, params = value.partition(";")
    charset = None
    for param in params.split(";"):
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset":
            charset = val.strip().strip('"').lower() or None
    return media_type.strip().lower() or None, charset


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    when = parse_http_date(value)
    return max(0.0, (when - utcnow()).total_seconds()) if when else None
