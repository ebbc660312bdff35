"""Python client of the RETRO server (``RetroClient``, ``AsyncRetroClient``); imports no torch or faiss.

A client takes one base URL or several (replicas over one store). Each request goes to the replica
that answered last and fails over to the next one when a replica cannot be reached, times out,
answers 503 or another 5xx, or sends a body that is not the answer its route promises. A replica
that fails ``cooldown_after`` times in a row is skipped for ``cooldown_s`` (unless every replica
is cooling down). The client also remembers the newest index version its answers came from and
prefers replicas at least that new, so the index a caller sees does not move backwards when a
lagging replica takes over (see :class:`RetroStaleVersion`).

Example:
    >>> with RetroClient(["http://retro-1:8000", "http://retro-2:8000"]) as client:  # doctest: +SKIP
    ...     hits = client.retrieve("who runs the harbour now?", k=2)
    ...     print(client.url, hits.index_version, hits.results[0][0].url)
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Sequence, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from model.contracts.ids import version_seq
from model.server.schemas import (
    GenerateRequest,
    GenerateResponse,
    Health,
    IndexInfo,
    Readiness,
    ReloadResponse,
    RetrieveRequest,
    RetrieveResponse,
    ScoreRequest,
    ScoreResponse,
)

LOG = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

# Routes the client sends again, to another replica, after the request may have reached a server
# (a read timeout, a 5xx, a connection that broke, an unreadable answer): none of them changes
# state. Retrieve, generate and score only compute; /admin/reload only re-reads CURRENT, as each
# server's own watcher does every few seconds. A route not listed here is failed over only when
# its request surely never left (the connection could not be opened).
_REPEATABLE = frozenset({"/healthz", "/readyz", "/v1/index", "/v1/retrieve", "/v1/generate", "/v1/score", "/admin/reload", "/metrics"})

# The connection was never opened: no server saw the request, whatever the route.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)

# A body the client cannot read as the route's answer: json's JSONDecodeError and a non-UTF-8 body
# are ValueErrors, pydantic's ValidationError is one too; TypeError/AttributeError cover JSON of
# the wrong kind (a list where an object was due).
_BAD_BODY = (ValueError, TypeError, AttributeError, httpx.DecodingError)


class RetroError(Exception):
    """Base class of the client's errors."""


class RetroConnectionError(RetroError):
    """The server could not be reached (after the configured retries)."""


class RetroTimeout(RetroError):
    """The server did not answer within the timeout."""


class RetroBadResponse(RetroError):
    """A server answered with a body that is not the answer its route promises (not JSON, or the wrong shape)."""


class RetroStaleVersion(RetroError):
    """Every replica that answered serves an older index version than one this client already returned.

    A replica that lags catches up at its next check of ``CURRENT`` (``RETROFRESH_RELOAD_INTERVAL_S``);
    asking again shortly usually succeeds. When no replica serves the newer version for
    ``regression_grace_s``, the client takes the older one as a rollback of ``CURRENT``.

    Attributes:
        newest: the newest version this client returned an answer from.
        served: what each replica that answered serves (url -> version).
    """

    def __init__(self, message: str, *, newest: str | None, served: dict[str, str]):
        self.newest = newest
        self.served = served
        super().__init__(message)


class RetroHTTPError(RetroError):
    """The server answered 4xx or 5xx; ``message`` is the server's ``detail``.

    Attributes:
        status_code: the HTTP status.
        message: what the server said was wrong.
        limit: the name of the limit a request broke (``max_k``, ``max_body_bytes``, ...), if any.
        body: the whole decoded error body.
    """

    def __init__(self, status_code: int, message: str, *, limit: str | None = None, body: Any = None):
        self.status_code = status_code
        self.message = message
        self.limit = limit
        self.body = body
        super().__init__(f"HTTP {status_code}: {message}")


def _error_of(response: httpx.Response) -> RetroHTTPError:
    try:
        body = response.json()
    except _BAD_BODY:
        body = response.text
    if isinstance(body, dict):
        detail = body.get("detail")
        message = detail if isinstance(detail, str) else str(detail) if detail is not None else response.reason_phrase
        return RetroHTTPError(response.status_code, message, limit=body.get("limit"), body=body)
    return RetroHTTPError(response.status_code, str(body) or response.reason_phrase, body=body)


def _why_unreadable(error: Exception) -> str:
    if isinstance(error, ValidationError):
        each = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors()[:3]]
        more = f" (and {error.error_count() - 3} more)" if error.error_count() > 3 else ""
        return "not the expected answer: " + "; ".join(each) + more
    return f"not JSON: {error}" if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"


def _payload(request: BaseModel) -> dict:
    return request.model_dump(mode="json", exclude_none=True)


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _response(response: httpx.Response) -> httpx.Response:
    return response


def _validator(model: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: model.model_validate(response.json())


def _healthy(response: httpx.Response) -> bool:
    return Health.model_validate(response.json()).status == "ok"


def _text(response: httpx.Response) -> str:
    return response.text


def _version_of(answer: Any) -> str | None:
    version = getattr(answer, "index_version", None)
    return version if isinstance(version, str) else None


class _Base:
    def __init__(self, url: str | Sequence[str], *, timeout: float, retries: int, backoff_s: float, admin_token: str | None,
                 cooldown_after: int, cooldown_s: float, regression_grace_s: float | None):
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if cooldown_after < 1 or cooldown_s < 0:
            raise ValueError(f"cooldown_after must be >= 1 and cooldown_s >= 0, got {cooldown_after} and {cooldown_s}")
        urls = [url] if isinstance(url, str) else list(url)
        if not urls or not all(isinstance(u, str) and u.strip() for u in urls):
            raise ValueError(f"give one server base URL or a list of them, got {url!r}")
        self.urls: tuple[str, ...] = tuple(u.strip().rstrip("/") for u in urls)
        self._active = 0  # index into urls of the replica that answered last
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.admin_token = admin_token
        self.cooldown_after = cooldown_after
        self.cooldown_s = cooldown_s
        self._failures = [0] * len(self.urls)  # failures in a row, per replica
        self._cool_until = [0.0] * len(self.urls)  # time.monotonic() until which a replica is skipped
        # With one URL there is no other replica to prefer: a lone server moves back only when
        # CURRENT is rolled back, so an older version is taken at once (and logged).
        self.regression_grace_s = (30.0 if len(self.urls) > 1 else 0.0) if regression_grace_s is None else regression_grace_s
        self.newest_version: str | None = None  # the newest index version an answer was returned from
        self.regressions = 0  # times the client took an older version as a rollback
        self._stale_since: float | None = None  # when no replica first served newest_version

    @property
    def url(self) -> str:
        """The base URL requests go to first: the replica that answered last."""
        return self.urls[self._active]

    def _delay(self, attempt: int) -> float:
        return self.backoff_s * (2**attempt)

    def _failover(self, method: str, path: str, monotonic: bool) -> "_Failover":
        return _Failover(self, method, path, monotonic)

    # replica health

    def _cooling(self, index: int, now: float) -> bool:
        return self._cool_until[index] > now

    def _replica_failed(self, index: int, what: str) -> None:
        self._failures[index] += 1
        if self._failures[index] >= self.cooldown_after and len(self.urls) > 1:
            now = time.monotonic()
            if not self._cooling(index, now):
                LOG.warning("%s failed %d times in a row (last: %s); skipping it for %g s",
                            self.urls[index], self._failures[index], what, self.cooldown_s)
            self._cool_until[index] = now + self.cooldown_s

    def _replica_answered(self, index: int) -> None:
        self._failures[index] = 0
        self._cool_until[index] = 0.0

    # index versions

    def _older(self, version: str | None) -> bool:
        """True when ``version`` is older than the newest one an answer came from (ids that do not order: False)."""
        if version is None or self.newest_version is None:
            return False
        return 0 <= version_seq(version) < version_seq(self.newest_version)

    def _returned(self, version: str | None) -> None:
        self._stale_since = None
        if version is not None and (self.newest_version is None or version_seq(version) >= version_seq(self.newest_version)):
            self.newest_version = version


class _Failover:
    """One request's walk over the replicas: rounds of one attempt per URL, from the active one.

    Replicas cooling down are skipped while another one is not. A connection error, a timeout, a
    503, another 5xx or an unreadable body moves on to the next URL (after the request may have
    reached a server only on a :data:`_REPEATABLE` route). When a round ends without an answer:
    if no replica could be reached, the client waits (``backoff_s``, doubling) and starts another
    round, at most ``retries`` more; if some replica answered (a 503 first: the server is up and
    said it cannot serve now, its ``Retry-After`` is the caller's to honour) or timed out, the
    request ends with that error, naming each replica's. An answer from an older index version than
    the client already returned (``monotonic`` requests) moves on too; see :class:`RetroStaleVersion`.
    """

    def __init__(self, client: _Base, method: str, path: str, monotonic: bool):
        self.client, self.method, self.path, self.monotonic = client, method, path, monotonic
        self.repeatable = path in _REPEATABLE
        self.errors: dict[str, str] = {}  # url -> what went wrong there last
        self.attempts: dict[str, int] = {}
        self.unavailable: RetroHTTPError | None = None  # the last 503
        self.failed: RetroError | None = None  # the last timeout, other 5xx or unreadable answer
        self.stale: list[tuple[int, str, str, Any]] = []  # (index, url, version, answer) of older answers
        self.last: Exception | None = None

    def targets(self) -> list[tuple[int, str]]:
        """The (index, url) pairs of one round, the active replica first, those cooling down left out."""
        client, now = self.client, time.monotonic()
        n, start = len(client.urls), client._active
        order = [(start + i) % n for i in range(n)]
        fresh = [i for i in order if not client._cooling(i, now)]
        for i in order:
            if fresh and i not in fresh:
                self.errors.setdefault(client.urls[i], f"skipped: failed {client._failures[i]} times in a row, "
                                                       f"cooling down for {client._cool_until[i] - now:.1f} s more")
        return [(i, client.urls[i]) for i in (fresh or order)]

    def sending(self, url: str) -> None:
        self.attempts[url] = self.attempts.get(url, 0) + 1

    def failed_to_send(self, index: int, url: str, exc: httpx.HTTPError) -> None:
        """Record a request that got no response; raises when it must not be sent elsewhere."""
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, _NOT_SENT):
            why = f"timed out after {self.client.timeout}s"
            self._failed(index, url, why, RetroTimeout(f"{self.method} {url}{self.path} {why}"), cause=exc)
            return
        self.client._replica_failed(index, type(exc).__name__)
        if not (self.repeatable or isinstance(exc, _NOT_SENT)):
            raise RetroConnectionError(f"{self.method} {url}{self.path} failed: {type(exc).__name__}: {exc}") from exc
        LOG.debug("%s %s%s: %s; trying the next server", self.method, url, self.path, exc)
        self.errors[url] = f"{type(exc).__name__}: {exc}"
        self.last = exc

    def answered(self, index: int, url: str, response: httpx.Response, parse: Callable[[httpx.Response], T]) -> tuple[bool, T | None]:
        """Record an answer; (True, the parsed answer) when it ends the request. Raises a 4xx's error."""
        client, status = self.client, response.status_code
        if status == 503:  # up, and says it cannot serve now: not a failure of the replica
            error = _error_of(response)
            LOG.debug("%s %s%s: 503 %s; trying the next server", self.method, url, self.path, error.message)
            self.errors[url] = f"HTTP 503: {error.message}"
            self.unavailable = error
            return False, None
        if status >= 500:
            error = _error_of(response)
            self._failed(index, url, str(error), error)
            return False, None
        if status >= 400:  # the request is wrong: every replica would say so
            client._active = index
            client._replica_answered(index)
            raise _error_of(response)
        try:
            answer = parse(response)
        except _BAD_BODY as exc:
            why = _why_unreadable(exc)
            error = RetroBadResponse(f"{self.method} {url}{self.path} answered {status} with a body that is {why}")
            self._failed(index, url, f"unreadable answer: {why}", error, cause=exc, level=logging.WARNING)
            return False, None
        client._replica_answered(index)
        version = _version_of(answer) if self.monotonic else None
        if client._older(version):
            LOG.debug("%s serves %s, older than %s; trying the next server", url, version, client.newest_version)
            self.errors[url] = f"serves {version}, older than {client.newest_version} which this client already returned"
            self.stale.append((index, url, version, answer))
            return False, None
        client._active = index
        if self.monotonic:
            client._returned(version)
        return True, answer

    def _failed(self, index: int, url: str, why: str, error: RetroError, *, cause: Exception | None = None,
                level: int = logging.DEBUG) -> None:
        """Record a failure after which the request may have reached ``url`` (a timeout, a 5xx, an
        unreadable answer); raises ``error`` when the route is not :data:`_REPEATABLE`."""
        self.client._replica_failed(index, why)
        if not self.repeatable:
            raise error from cause
        LOG.log(level, "%s %s%s: %s; trying the next server", self.method, url, self.path, why)
        self.errors[url] = why
        self.failed = error

    def rolled_back(self) -> tuple[bool, Any]:
        """After a round with only older answers: (True, the newest of them) once the grace has passed."""
        if not self.stale:
            return False, None
        client, now = self.client, time.monotonic()
        if client._stale_since is None:
            client._stale_since = now
        if now - client._stale_since < client.regression_grace_s:
            return False, None
        index, url, version, answer = max(self.stale, key=lambda s: version_seq(s[2]))
        LOG.warning("index version moved back from %s to %s: no replica has served %s for %g s, so CURRENT was rolled back",
                    client.newest_version, version, client.newest_version, client.regression_grace_s)
        client.regressions += 1
        client.newest_version = version
        client._stale_since = None
        client._active = index
        return True, answer

    def next_round(self, round_: int) -> float:
        """Seconds to wait before round ``round_ + 1``; raises the request's error when there is none."""
        if self.stale:
            raise self._stale_error()
        if self.unavailable is not None:
            raise self._unavailable_error()
        if self.failed is not None:
            raise self._failed_error()
        if round_ >= self.client.retries:
            raise self._connection_error() from self.last
        return self.client._delay(round_)

    def _each(self) -> str:
        return "; ".join(f"{url}: {error}" for url, error in self.errors.items())

    def _stale_error(self) -> RetroStaleVersion:
        client = self.client
        waited = time.monotonic() - (client._stale_since or time.monotonic())
        return RetroStaleVersion(
            f"{self.method} {self.path}: no replica serves index version {client.newest_version} or newer, which this client "
            f"already returned answers from ({self._each()}). A lagging replica catches up at its next check of CURRENT: "
            f"ask again shortly; after {client.regression_grace_s:g} s without one (now {waited:.1f} s) the client takes "
            f"the older version as a rollback.",
            newest=client.newest_version, served={url: version for _, url, version, _ in self.stale},
        )

    def _failed_error(self) -> RetroError:
        error = self.failed
        if len(self.client.urls) == 1:
            return error
        message = f"{self.method} {self.path}: no server could answer: {self._each()}"
        if isinstance(error, RetroHTTPError):
            return RetroHTTPError(error.status_code, message, limit=error.limit, body=error.body)
        return type(error)(message)

    def _connection_error(self) -> RetroConnectionError:
        if len(self.client.urls) == 1:
            url = self.client.urls[0]
            return RetroConnectionError(f"{self.method} {url}{self.path} failed after {self.attempts.get(url, 0)} attempts: {self.errors[url]}")
        tries = set(self.attempts.values())
        if len(tries) == 1 and len(self.attempts) == len(self.client.urls):
            return RetroConnectionError(
                f"{self.method} {self.path} failed on all {len(self.client.urls)} servers after {tries.pop()} attempts each: {self._each()}"
            )
        each = "; ".join(f"{url} ({self.attempts.get(url, 0)} attempts): {error}" for url, error in self.errors.items())
        return RetroConnectionError(f"{self.method} {self.path} failed on all {len(self.client.urls)} servers: {each}")

    def _unavailable_error(self) -> RetroHTTPError:
        error = self.unavailable
        if len(self.client.urls) > 1:
            error = RetroHTTPError(503, f"no server could answer: {self._each()}", limit=error.limit, body=error.body)
        return error


def _retrieve_request(text: str | Sequence[str], k: int) -> RetrieveRequest:
    if isinstance(text, str):
        return RetrieveRequest(text=text, k=k)
    return RetrieveRequest(texts=list(text), k=k)


def _readiness_of(error: RetroHTTPError) -> Readiness:
    """A 503 from ``/readyz`` is an answer (not ready, and why), not an error."""
    try:
        return Readiness.model_validate(error.body)
    except ValidationError as exc:
        raise RetroBadResponse(f"GET /readyz answered 503 with a body that is {_why_unreadable(exc)}") from exc


def _keeps_waiting(error: RetroError) -> bool:
    """Whether ``wait_ready`` polls on after ``error``: anything but a 4xx (a wrong URL or path) may pass."""
    return not (isinstance(error, RetroHTTPError) and 400 <= error.status_code < 500)


class RetroClient(_Base):
    """Blocking client of one RETRO server, or of several replicas with failover between them.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8000``, or a list of replicas' URLs:
            a request goes to the replica that answered last and moves on to the next one on a
            connection error, a timeout, a 5xx or an unreadable answer. Per-replica calls
            (:meth:`reload`, :meth:`index`) reach whichever replica answers; to reload every
            replica use one client per URL.
        timeout: seconds to wait for each answer (generation of many tokens can take a while).
        retries: extra rounds over the URLs after every one failed to connect (not after an answer
            or a timeout).
        backoff_s: wait before the first retry; doubles each time.
        admin_token: bearer token for :meth:`reload`.
        cooldown_after: failures in a row after which a replica is skipped for ``cooldown_s``.
        cooldown_s: how long a failing replica is skipped while another one is available.
        regression_grace_s: how long no replica may serve the newest index version this client
            returned before an older one is taken as a rollback of ``CURRENT``; until then such
            requests raise :class:`RetroStaleVersion`. Default: 30 s with several URLs, 0 with one
            (a lone server moves back only on a rollback).
        transport: an httpx transport (for tests or custom networking).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        timeout: float = 30.0,
        retries: int = 2,
        backoff_s: float = 0.2,
        admin_token: str | None = None,
        cooldown_after: int = 2,
        cooldown_s: float = 30.0,
        regression_grace_s: float | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        super().__init__(url, timeout=timeout, retries=retries, backoff_s=backoff_s, admin_token=admin_token,
                         cooldown_after=cooldown_after, cooldown_s=cooldown_s, regression_grace_s=regression_grace_s)
        self._http = httpx.Client(timeout=timeout, transport=transport)

    def __enter__(self) -> "RetroClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, *, parse: Callable[[httpx.Response], Any] = _response, monotonic: bool = False,
                 json: dict | None = None, headers: dict | None = None) -> Any:
        failover = self._failover(method, path, monotonic)
        for round_ in range(self.retries + 1):
            for index, url in failover.targets():
                failover.sending(url)
                try:
                    response = self._http.request(method, url + path, json=json, headers=headers)
                except httpx.HTTPError as exc:
                    failover.failed_to_send(index, url, exc)
                    continue
                done, answer = failover.answered(index, url, response, parse)
                if done:
                    return answer
            rolled_back, answer = failover.rolled_back()
            if rolled_back:
                return answer
            time.sleep(failover.next_round(round_))
        raise AssertionError("unreachable")

    def _call(self, model: type[M], method: str, path: str, **kwargs) -> M:
        return self._request(method, path, parse=_validator(model), **kwargs)

    def healthz(self) -> bool:
        """True when the server process answers."""
        return self._request("GET", "/healthz", parse=_healthy)

    def ready(self) -> Readiness:
        """Readiness, whether ready or not (a 503 from ``/readyz`` is returned, not raised)."""
        try:
            return self._call(Readiness, "GET", "/readyz")
        except RetroHTTPError as exc:
            if exc.status_code == 503 and isinstance(exc.body, dict):
                return _readiness_of(exc)
            raise

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.2) -> Readiness:
        """Poll ``/readyz`` until the server is ready.

        Args:
            timeout: seconds to wait at most.
            interval: seconds between polls.

        Returns:
            The first ready answer.

        Raises:
            RetroTimeout: not ready in time (the message says why, as the server reported it).
            RetroHTTPError: a 4xx (the URL is not a RETRO server's).
        """
        deadline = time.monotonic() + timeout
        last: Readiness | str | None = None
        while time.monotonic() < deadline:
            try:
                last = self.ready()
                if last.ready:
                    return last
            except RetroError as exc:
                if not _keeps_waiting(exc):
                    raise
                last = str(exc)
            time.sleep(interval)
        raise RetroTimeout(f"{self.url} not ready after {timeout}s: {last}")

    def index(self) -> IndexInfo:
        """The index version served now (by the replica that answers)."""
        return self._call(IndexInfo, "GET", "/v1/index")

    def retrieve(self, text: str | Sequence[str], k: int = 2) -> RetrieveResponse:
        """Neighbours of one text or of each text in a batch.

        Args:
            text: a query, or a list of queries.
            k: neighbours per query.

        Returns:
            ``index_version`` and one list of neighbours per query.

        Raises:
            RetroStaleVersion: every replica that answered serves an older version than an earlier answer.
        """
        return self._call(RetrieveResponse, "POST", "/v1/retrieve", monotonic=True, json=_payload(_retrieve_request(text, k)))

    def generate(self, prompt: str, **options) -> GenerateResponse:
        """Continue ``prompt``.

        Args:
            prompt: the text to continue.
            **options: fields of :class:`model.server.schemas.GenerateRequest` (max_new_tokens,
                temperature, top_k, top_p, seed, retrieval, k).

        Returns:
            The text, the neighbours used per chunk and the index version they came from.

        Raises:
            RetroStaleVersion: every replica that answered serves an older version than an earlier answer.
        """
        return self._call(GenerateResponse, "POST", "/v1/generate", monotonic=True,
                          json=_payload(GenerateRequest(prompt=prompt, **options)))

    def score(self, text: str, *, retrieval: bool = True, k: int | None = None) -> ScoreResponse:
        """Loss and bits-per-byte of ``text`` with retrieval on or off."""
        return self._call(ScoreResponse, "POST", "/v1/score", monotonic=True,
                          json=_payload(ScoreRequest(text=text, retrieval=retrieval, k=k)))

    def reload(self, token: str | None = None) -> ReloadResponse:
        """Ask the server to check CURRENT now (needs the admin token)."""
        return self._call(ReloadResponse, "POST", "/admin/reload", headers=_auth(token or self.admin_token))

    def metrics(self) -> str:
        """The Prometheus exposition text."""
        return self._request("GET", "/metrics", parse=_text)


class AsyncRetroClient(_Base):
    """Asyncio client of one RETRO server or several replicas; same methods as :class:`RetroClient`, awaited.

    Args:
        url, timeout, retries, backoff_s, admin_token, cooldown_after, cooldown_s, regression_grace_s:
            as for :class:`RetroClient`.
        max_connections: size of the connection pool (concurrent requests in flight).
        transport: an httpx async transport.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        timeout: float = 30.0,
        retries: int = 2,
        backoff_s: float = 0.2,
        admin_token: str | None = None,
        cooldown_after: int = 2,
        cooldown_s: float = 30.0,
        regression_grace_s: float | None = None,
        max_connections: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        super().__init__(url, timeout=timeout, retries=retries, backoff_s=backoff_s, admin_token=admin_token,
                         cooldown_after=cooldown_after, cooldown_s=cooldown_s, regression_grace_s=regression_grace_s)
        self._http = httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def __aenter__(self) -> "AsyncRetroClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, *, parse: Callable[[httpx.Response], Any] = _response, monotonic: bool = False,
                       json: dict | None = None, headers: dict | None = None) -> Any:
        failover = self._failover(method, path, monotonic)
        for round_ in range(self.retries + 1):
            for index, url in failover.targets():
                failover.sending(url)
                try:
                    response = await self._http.request(method, url + path, json=json, headers=headers)
                except httpx.HTTPError as exc:
                    failover.failed_to_send(index, url, exc)
                    continue
                done, answer = failover.answered(index, url, response, parse)
                if done:
                    return answer
            rolled_back, answer = failover.rolled_back()
            if rolled_back:
                return answer
            await asyncio.sleep(failover.next_round(round_))
        raise AssertionError("unreachable")

    async def _call(self, model: type[M], method: str, path: str, **kwargs) -> M:
        return await self._request(method, path, parse=_validator(model), **kwargs)

    async def healthz(self) -> bool:
        return await self._request("GET", "/healthz", parse=_healthy)

    async def ready(self) -> Readiness:
        try:
            return await self._call(Readiness, "GET", "/readyz")
        except RetroHTTPError as exc:
            if exc.status_code == 503 and isinstance(exc.body, dict):
                return _readiness_of(exc)
            raise

    async def index(self) -> IndexInfo:
        return await self._call(IndexInfo, "GET", "/v1/index")

    async def retrieve(self, text: str | Sequence[str], k: int = 2) -> RetrieveResponse:
        return await self._call(RetrieveResponse, "POST", "/v1/retrieve", monotonic=True, json=_payload(_retrieve_request(text, k)))

    async def generate(self, prompt: str, **options) -> GenerateResponse:
        return await self._call(GenerateResponse, "POST", "/v1/generate", monotonic=True,
                                json=_payload(GenerateRequest(prompt=prompt, **options)))

    async def score(self, text: str, *, retrieval: bool = True, k: int | None = None) -> ScoreResponse:
        return await self._call(ScoreResponse, "POST", "/v1/score", monotonic=True,
                                json=_payload(ScoreRequest(text=text, retrieval=retrieval, k=k)))

    async def reload(self, token: str | None = None) -> ReloadResponse:
        return await self._call(ReloadResponse, "POST", "/admin/reload", headers=_auth(token or self.admin_token))

    async def metrics(self) -> str:
        return await self._request("GET", "/metrics", parse=_text)
