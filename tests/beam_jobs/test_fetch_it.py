"""The polite fetcher against a hostile site: every bad answer ends as a counted reason, quickly."""

from __future__ import annotations

import ipaddress
import socket
import time

import pytest

from beam_jobs.fetch import Fetcher
from beam_jobs.netguard import LOOPBACK, AddressPolicy
from beam_jobs.sources import FetchSettings
from beam_jobs.types import FAILED, FETCHED, GONE, NOT_MODIFIED, ROBOTS_BLOCKED
from tests.beam_jobs.hostile import LATIN1_TEXT, METADATA_URL, PRIVATE_URLS, HostileSite

pytestmark = pytest.mark.integration

LOCAL = AddressPolicy(LOOPBACK)  # the hostile site lives on 127.0.0.1; nothing else private
FAST = FetchSettings(crawl_delay_s=0, timeout_s=0.5, deadline_s=3, retries=1, backoff_s=0.01, max_backoff_s=0.05, max_bytes=1_000_000)


@pytest.fixture
def site():
    with HostileSite(stall_s=3) as server:
        yield server


@pytest.fixture
def fetcher():
    f = Fetcher(FAST, policy=LOCAL)
    yield f
    f.close()


def test_plain_page_is_fetched_with_its_validators(site, fetcher):
    result = fetcher.fetch(site.base_url + "/etag.html", source="s")
    assert (result.outcome, result.status, result.etag) == (FETCHED, 200, '"v1"')
    again = fetcher.fetch(site.base_url + "/etag.html", source="s", etag=result.etag)
    assert again.outcome == NOT_MODIFIED and again.body is None


@pytest.mark.parametrize(
    "path, outcome, reason",
    [
        ("/binary.html", FETCHED, None),  # bytes arrive; extraction refuses them (test_extract)
        ("/huge-declared.html", FAILED, "too_large"),
        ("/huge-streamed.html", FAILED, "too_large"),
        ("/loop-a", FAILED, "redirect_loop"),
        ("/to-metadata", FAILED, "blocked_address"),
        ("/image.png", FAILED, "content_type"),
        ("/missing.html", GONE, "http_404"),
        ("/secret/plans.html", ROBOTS_BLOCKED, "robots_txt"),
    ],
)
def test_hostile_answers_end_as_counted_outcomes(site, fetcher, path, outcome, reason):
    started = time.monotonic()
    result = fetcher.fetch(site.base_url + path, source="s")
    assert (result.outcome, result.reason) == (outcome, reason)
    assert time.monotonic() - started < 5


def test_disallowed_page_is_never_requested(site, fetcher):
    fetcher.fetch(site.base_url + "/secret/plans.html", source="s")
    assert "/robots.txt" in site.paths() and "/secret/plans.html" not in site.paths()


def test_stalling_server_times_out_after_bounded_retries(site, fetcher):
    started = time.monotonic()
    result = fetcher.fetch(site.base_url + "/stall.html", source="s")
    assert (result.outcome, result.reason) == (FAILED, "timeout")
    assert site.paths().count("/stall.html") == 2  # one try + one retry
    assert time.monotonic() - started < 3


def test_500_then_200_is_retried_and_fetched(site, fetcher):
    result = fetcher.fetch(site.base_url + "/flaky.html", source="s")
    assert result.outcome == FETCHED and fetcher.retries == 1
    assert site.paths().count("/flaky.html") == 2


def test_metadata_address_is_refused_even_when_private_addresses_are_allowed(site, fetcher):
    result = fetcher.fetch(METADATA_URL, source="s")
    assert (result.outcome, result.reason) == (FAILED, "blocked_address")
    assert fetcher.requests == 0  # not even its robots.txt


@pytest.fixture
def connects(monkeypatch):
    """Every TCP connect attempt's address; only loopback ones are let through to the real socket."""
    attempts: list[str] = []
    real = socket.socket.connect

    def recording(sock, address):
        attempts.append(str(address[0]))
        if not ipaddress.ip_address(str(address[0]).split("%")[0]).is_loopback:
            raise ConnectionRefusedError(f"test guard: no traffic to {address[0]} leaves this machine")
        return real(sock, address)

    monkeypatch.setattr(socket.socket, "connect", recording)
    return attempts


@pytest.mark.parametrize("path", sorted(PRIVATE_URLS))
def test_a_redirect_to_a_network_the_source_does_not_name_is_refused_before_connecting(site, fetcher, connects, path):
    result = fetcher.fetch(site.base_url + path, source="s")
    assert (result.outcome, result.reason) == (FAILED, "blocked_address")
    assert site.paths().count(path) == 1  # the loopback hop was made...
    assert connects and all(ipaddress.ip_address(a).is_loopback for a in connects)  # ...and no other


def test_a_named_network_is_reached_and_its_redirects_rechecked(site, connects):
    # 10.0.0.0/8 named: the crawler does try 10.0.0.1 (the test socket refuses it, so nothing leaves).
    f = Fetcher(FAST, policy=AddressPolicy(LOOPBACK + (ipaddress.ip_network("10.0.0.0/8"),)))
    try:
        result = f.fetch(site.base_url + "/to-private-1", source="s")
    finally:
        f.close()
    assert result.reason != "blocked_address" and "10.0.0.1" in connects
    only = Fetcher(FAST, policy=AddressPolicy((ipaddress.ip_network("10.0.0.0/8"),)))  # loopback not named
    try:
        assert only.fetch(site.base_url + "/ok.html", source="s").reason == "blocked_address"
    finally:
        only.close()


@pytest.mark.parametrize("network", ["169.254.0.0/16", "169.254.169.254", "0.0.0.0/0", "::/0", "fe80::/64", "224.0.0.0/8", "10.0.0.1/8"])
def test_networks_that_are_never_allowed_cannot_be_named(network):
    from beam_jobs.sources import SiteSource

    with pytest.raises(ValueError, match="never allowed|not an IP network"):
        SiteSource(kind="site", name="s", start_urls=["http://127.0.0.1/"], allow_networks=[network])


def test_metadata_and_link_local_stay_refused_whatever_is_allowed():
    policy = AddressPolicy(LOOPBACK + (ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("fd00::/8")))
    for address in ("169.254.169.254", "100.100.100.200", "fd00:ec2::254", "fe80::1", "::ffff:169.254.169.254", "224.0.0.1"):
        assert policy.refusal(ipaddress.ip_address(address)) is not None, address
    for address in ("127.0.0.1", "::1", "100.64.1.1", "fd00::5", "93.184.216.34"):
        assert policy.refusal(ipaddress.ip_address(address)) is None, address
    assert AddressPolicy().refusal(ipaddress.ip_address("10.1.2.3")) == "private"


@pytest.mark.parametrize(
    "address, refused, allowing",
    [  # a 6to4 address (2002:AABB:CCDD::/48) carries the IPv4 address AA.BB.CC.DD
        ("2002:a9fe:a9fe::", "cloud metadata", "cloud metadata"),  # 169.254.169.254
        ("2002:6464:64c8::1", "cloud metadata", "cloud metadata"),  # 100.100.100.200 (Alibaba)
        ("2002:a9fe:101::", "link-local", "link-local"),  # 169.254.1.1
        ("2002:e000:1::", "reserved", "reserved"),  # 224.0.0.1, multicast
        ("2002::", "reserved", "reserved"),  # 0.0.0.0
        ("2002:7f00:1::", "loopback", None),  # 127.0.0.1: as loopback itself
        ("2002:a00:1::", "private", None),  # 10.0.0.1: as the named network
        ("2002:c0a8:101::1", "private", "private"),  # 192.168.1.1: not named
        ("2002:5db8:d822::", None, None),  # 93.184.216.34, public
    ],
)
def test_a_6to4_address_is_judged_by_the_ipv4_address_it_carries(address, refused, allowing):
    assert AddressPolicy().refusal(ipaddress.ip_address(address)) == refused
    named = AddressPolicy(LOOPBACK + (ipaddress.ip_network("10.0.0.0/8"),))
    assert named.refusal(ipaddress.ip_address(address)) == allowing


@pytest.fixture
def resolver(monkeypatch):
    """Stub DNS: ``answers[name]`` is the list of addresses each lookup of ``name`` returns in turn
    (the last one repeats); other names and IP literals go to the real resolver."""
    answers: dict[str, list[str]] = {}
    lookups: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        queue = answers[host]
        address = queue.pop(0) if len(queue) > 1 else queue[0]
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    answers["lookups"] = lookups  # type: ignore[assignment]
    return answers


def test_a_name_resolving_to_a_6to4_metadata_address_is_refused_before_connecting(resolver, connects):
    resolver["metadata.test"] = ["2002:a9fe:a9fe::"]
    f = Fetcher(FAST, policy=AddressPolicy(LOOPBACK + (ipaddress.ip_network("10.0.0.0/8"),)))
    try:
        result = f.fetch("http://metadata.test/latest/meta-data/", source="s")
    finally:
        f.close()
    assert (result.outcome, result.reason) == (FAILED, "blocked_address")
    assert resolver["lookups"] and connects == []


@pytest.mark.parametrize("public_lookups", [1, 2, 3])
def test_dns_rebinding_cannot_reach_what_the_check_refused(site, resolver, connects, public_lookups):
    # The name resolves to a public address for its first lookups and to loopback (the site) after
    # that, whichever lookup that falls on (the early check, the connect, a retry): the socket
    # connects only to an address that was checked, and every later answer is checked anew.
    port = int(site.base_url.rsplit(":", 1)[1])
    resolver["rebind.test"] = ["93.184.216.34"] * public_lookups + ["127.0.0.1"]
    f = Fetcher(FAST)  # loopback not allowed
    try:
        result = f.fetch(f"http://rebind.test:{port}/ok.html", source="s")
    finally:
        f.close()
    assert result.outcome == FAILED
    assert len(resolver["lookups"]) > public_lookups  # the loopback answer was given, and refused
    assert set(connects) <= {"93.184.216.34"} and site.paths() == []


def test_dns_rebinding_to_loopback_first_is_refused_and_never_connects(site, resolver, connects):
    port = int(site.base_url.rsplit(":", 1)[1])
    resolver["rebind.test"] = ["127.0.0.1", "93.184.216.34"]
    f = Fetcher(FAST)
    try:
        result = f.fetch(f"http://rebind.test:{port}/ok.html", source="s")
    finally:
        f.close()
    assert (result.outcome, result.reason) == (FAILED, "blocked_address")
    assert connects == [] and site.paths() == []


def test_allow_private_is_loopback_only_now():
    from beam_jobs.sources import SiteSource

    source = SiteSource(kind="site", name="s", start_urls=["http://127.0.0.1/"], allow_private=True)
    assert source.address_policy.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert source.address_policy.refusal(ipaddress.ip_address("10.0.0.1")) == "private"


def test_loopback_is_refused_unless_the_source_allows_private_addresses(site):
    strict = Fetcher(FAST)
    try:
        result = strict.fetch(site.base_url.replace("127.0.0.1", "localhost") + "/ok.html", source="s")
    finally:
        strict.close()
    assert (result.outcome, result.reason) == (FAILED, "blocked_address")
    assert site.paths() == []


def test_robots_crawl_delay_spaces_requests_to_one_host():
    with HostileSite(crawl_delay=0.3) as slow_site:
        f = Fetcher(FAST, policy=LOCAL)
        try:
            for path in ("/ok.html", "/malformed.html", "/etag.html"):
                assert f.fetch(slow_site.base_url + path, source="s").outcome == FETCHED
        finally:
            f.close()
        times = [t for _, t in slow_site.requests]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) == 4 and min(gaps) >= 0.29, gaps  # robots.txt + 3 pages


def test_429_is_retried_after_the_capped_retry_after(site, fetcher):
    started = time.monotonic()
    result = fetcher.fetch(site.base_url + "/busy.html", source="s")
    assert result.outcome == FETCHED and site.paths().count("/busy.html") == 2
    assert time.monotonic() - started < 1  # Retry-After: 2 capped by max_backoff_s


def test_redirects_beyond_the_limit_fail(site):
    strict = Fetcher(FAST.model_copy(update={"max_redirects": 0}), policy=LOCAL)
    try:
        result = strict.fetch(site.base_url + "/loop-a", source="s")
    finally:
        strict.close()
    assert (result.outcome, result.reason) == (FAILED, "too_many_redirects")


@pytest.mark.parametrize("status, outcome, reason", [(503, FAILED, "robots_unreachable"), (404, FETCHED, None)])
def test_robots_txt_errors_follow_rfc_9309(status, outcome, reason):
    with HostileSite(robots_status=status) as odd_site:
        f = Fetcher(FAST, policy=LOCAL)
        try:
            result = f.fetch(odd_site.base_url + "/secret/plans.html", source="s")
        finally:
            f.close()
        paths = odd_site.paths()
    assert (result.outcome, result.reason) == (outcome, reason)
    # 5xx: assume everything is disallowed (the page is never asked); 4xx: no rules at all
    assert ("/secret/plans.html" in paths) == (status == 404)


def test_latin1_text_arrives_as_bytes_for_extraction(site, fetcher):
    result = fetcher.fetch(site.base_url + "/latin1.txt", source="s")
    assert result.outcome == FETCHED and result.kind == "text" and LATIN1_TEXT.encode("latin-1") in result.body
