"""Python client of the RETRO server (``RetroClient``, ``AsyncRetroClient``); imports no torch or faiss.

A client takes one base URL or several (replicas over one store): it sends each request to the
replica that answered last and fails over to the next one when a replica cannot be reached or
answers 503 (not ready, or at its ``max_inflight`` limit).

Example:
    >>> with RetroClient(["http://retro-1:8000", "http://retro-2:8000"]) as client:  # doctest: +SKIP
    ...     hits = client.retrieve("who runs the harbour now?", k=2)
    ...     print(client.url, hits.index_version, hits.results[0][0].url)
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Sequence, TypeVar

import httpx
from pydantic import BaseModel

from model.schemas import (
    GenerateRequest,
    GenerateResponse,
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

# Errors where the request never reached the server's application, or the connection broke before
# an answer: every endpoint is safe to repeat (none changes state except /admin/reload, which only
# re-reads CURRENT), so these are retried.
_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class RetroError(Exception):
    """Base class of the client's errors."""


class RetroConnectionError(RetroError):
    """The server could not be reached (after the configured retries)."""


class RetroTimeout(RetroError):
    """The server did not answer within the timeout."""


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
    except ValueError:
        body = response.text
    if isinstance(body, dict):
        detail = body.get("detail")
        message = detail if isinstance(detail, str) else str(detail) if detail is not None else response.reason_phrase
        return RetroHTTPError(response.status_code, message, limit=body.get("limit"), body=body)
    return RetroHTTPError(response.status_code, str(body) or response.reason_phrase, body=body)


def _payload(request: BaseModel) -> dict:
    return request.model_dump(mode="json", exclude_none=True)


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class _Base:
    def __init__(self, url: str | Sequence[str], *, timeout: float, retries: int, backoff_s: float, admin_token: str | None):
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        urls = [url] if isinstance(url, str) else list(url)
        if not urls or not all(isinstance(u, str) and u.strip() for u in urls):
            raise ValueError(f"give one server base URL or a list of them, got {url!r}")
        self.urls: tuple[str, ...] = tuple(u.strip().rstrip("/") for u in urls)
        self._active = 0  # index into urls of the replica that answered last
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.admin_token = admin_token

    @property
    def url(self) -> str:
        """The base URL requests go to first: the replica that answered last."""
        return self.urls[self._active]

    def _delay(self, attempt: int) -> float:
        return self.backoff_s * (2**attempt)

    def _failover(self, method: str, path: str) -> "_Failover":
        return _Failover(self, method, path)


class _Failover:
    """One request's walk over the replicas: rounds of one attempt per URL, from the active one.

    A connection error or a 503 moves on to the next URL. After a round in which no replica could
    be reached, the client waits (``backoff_s``, doubling) and starts another round, at most
    ``retries`` more. A round in which some replica answered 503 ends the request with that answer:
    the server is up and said it cannot serve now (its ``Retry-After`` is the caller's to honour).
    A read timeout is not failed over: the first replica may still be working on the request.
    """

    def __init__(self, client: _Base, method: str, path: str):
        self.client, self.method, self.path = client, method, path
        self.errors: dict[str, str] = {}  # url -> what went wrong there last
        self.unavailable: RetroHTTPError | None = None
        self.last: Exception | None = None

    def targets(self) -> list[tuple[int, str]]:
        """The (index, url) pairs of one round, the active replica first."""
        n, start = len(self.client.urls), self.client._active
        return [((start + i) % n, self.client.urls[(start + i) % n]) for i in range(n)]

    def connection_failed(self, url: str, exc: Exception) -> None:
        LOG.debug("%s %s%s: %s; trying the next server", self.method, url, self.path, exc)
        self.errors[url] = f"{type(exc).__name__}: {exc}"
        self.last = exc

    def answered(self, index: int, url: str, response: httpx.Response) -> bool:
        """Record an answer; True when it ends the request (anything but a 503)."""
        if response.status_code != 503:
            self.client._active = index
            return True
        error = _error_of(response)
        LOG.debug("%s %s%s: 503 %s; trying the next server", self.method, url, self.path, error.message)
        self.errors[url] = f"HTTP 503: {error.message}"
        self.unavailable = error
        return False

    def next_round(self, round_: int) -> float:
        """Seconds to wait before round ``round_ + 1``; raises the request's error when there is none."""
        if self.unavailable is not None:
            raise self._unavailable_error()
        if round_ >= self.client.retries:
            raise self._connection_error() from self.last
        return self.client._delay(round_)

    def timed_out(self, url: str) -> RetroTimeout:
        return RetroTimeout(f"{self.method} {url}{self.path} timed out after {self.client.timeout}s")

    def _connection_error(self) -> RetroConnectionError:
        attempts = self.client.retries + 1
        if len(self.client.urls) == 1:
            url = self.client.urls[0]
            return RetroConnectionError(f"{self.method} {url}{self.path} failed after {attempts} attempts: {self.errors[url]}")
        each = "; ".join(f"{url}: {error}" for url, error in self.errors.items())
        return RetroConnectionError(
            f"{self.method} {self.path} failed on all {len(self.client.urls)} servers after {attempts} attempts each: {each}"
        )

    def _unavailable_error(self) -> RetroHTTPError:
        error = self.unavailable
        if len(self.client.urls) > 1:
            each = "; ".join(f"{url}: {what}" for url, what in self.errors.items())
            error = RetroHTTPError(503, f"no server could answer: {each}", limit=error.limit, body=error.body)
        return error


def _retrieve_request(text: str | Sequence[str], k: int) -> RetrieveRequest:
    if isinstance(text, str):
        return RetrieveRequest(text=text, k=k)
    return RetrieveRequest(texts=list(text), k=k)


class RetroClient(_Base):
    """Blocking client of one RETRO server, or of several replicas with failover between them.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8000``, or a list of replicas' URLs:
            a request goes to the replica that answered last and moves on to the next one on a
            connection error or a 503. Per-replica calls (:meth:`reload`, :meth:`index`) reach
            whichever replica answers; to reload every replica use one client per URL.
        timeout: seconds to wait for each answer (generation of many tokens can take a while).
        retries: extra rounds over the URLs after every one failed to connect (not after an HTTP
            error answer).
        backoff_s: wait before the first retry; doubles each time.
        admin_token: bearer token for :meth:`reload`.
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
        transport: httpx.BaseTransport | None = None,
    ):
        super().__init__(url, timeout=timeout, retries=retries, backoff_s=backoff_s, admin_token=admin_token)
        self._http = httpx.Client(timeout=timeout, transport=transport)

    def __enter__(self) -> "RetroClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, *, json: dict | None = None, headers: dict | None = None) -> httpx.Response:
        failover = self._failover(method, path)
        for round_ in range(self.retries + 1):
            for index, url in failover.targets():
                try:
                    response = self._http.request(method, url + path, json=json, headers=headers)
                except _RETRYABLE as exc:
                    failover.connection_failed(url, exc)
                    continue
                except httpx.TimeoutException as exc:
                    raise failover.timed_out(url) from exc
                if failover.answered(index, url, response):
                    if response.status_code >= 400:
                        raise _error_of(response)
                    return response
            time.sleep(failover.next_round(round_))
        raise AssertionError("unreachable")

    def _call(self, model: type[M], method: str, path: str, **kwargs) -> M:
        return model.model_validate(self._request(method, path, **kwargs).json())

    def healthz(self) -> bool:
        """True when the server process answers."""
        return self._request("GET", "/healthz").json().get("status") == "ok"

    def ready(self) -> Readiness:
        """Readiness, whether ready or not (a 503 from ``/readyz`` is returned, not raised)."""
        try:
            return self._call(Readiness, "GET", "/readyz")
        except RetroHTTPError as exc:
            if exc.status_code == 503 and isinstance(exc.body, dict):
                return Readiness.model_validate(exc.body)
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
        """
        deadline = time.monotonic() + timeout
        last: Readiness | str | None = None
        while time.monotonic() < deadline:
            try:
                last = self.ready()
                if last.ready:
                    return last
            except RetroConnectionError as exc:
                last = str(exc)
            time.sleep(interval)
        raise RetroTimeout(f"{self.url} not ready after {timeout}s: {last}")

    def index(self) -> IndexInfo:
        """The index version served now."""
        return self._call(IndexInfo, "GET", "/v1/index")

    def retrieve(self, text: str | Sequence[str], k: int = 2) -> RetrieveResponse:
        """Neighbours of one text or of each text in a batch.

        Args:
            text: a query, or a list of queries.
            k: neighbours per query.

        Returns:
            ``index_version`` and one list of neighbours per query.
        """
        return self._call(RetrieveResponse, "POST", "/v1/retrieve", json=_payload(_retrieve_request(text, k)))

    def generate(self, prompt: str, **options) -> GenerateResponse:
        """Continue ``prompt``.

        Args:
            prompt: the text to continue.
            **options: fields of :class:`model.schemas.GenerateRequest` (max_new_tokens,
                temperature, top_k, top_p, seed, retrieval, k).

        Returns:
            The text, the neighbours used per chunk and the index version they came from.
        """
        return self._call(GenerateResponse, "POST", "/v1/generate", json=_payload(GenerateRequest(prompt=prompt, **options)))

    def score(self, text: str, *, retrieval: bool = True, k: int | None = None) -> ScoreResponse:
        """Loss and bits-per-byte of ``text`` with retrieval on or off."""
        return self._call(ScoreResponse, "POST", "/v1/score", json=_payload(ScoreRequest(text=text, retrieval=retrieval, k=k)))

    def reload(self, token: str | None = None) -> ReloadResponse:
        """Ask the server to check CURRENT now (needs the admin token)."""
        return self._call(ReloadResponse, "POST", "/admin/reload", headers=_auth(token or self.admin_token))

    def metrics(self) -> str:
        """The Prometheus exposition text."""
        return self._request("GET", "/metrics").text


class AsyncRetroClient(_Base):
    """Asyncio client of one RETRO server or several replicas; same methods as :class:`RetroClient`, awaited.

    Args:
        url: the server's base URL, or a list of replicas' URLs (failover as in :class:`RetroClient`).
        timeout: seconds to wait for each answer.
        retries: extra rounds over the URLs after every one failed to connect.
        backoff_s: wait before the first retry; doubles each time.
        admin_token: bearer token for :meth:`reload`.
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
        max_connections: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        super().__init__(url, timeout=timeout, retries=retries, backoff_s=backoff_s, admin_token=admin_token)
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

    async def _request(self, method: str, path: str, *, json: dict | None = None, headers: dict | None = None) -> httpx.Response:
        failover = self._failover(method, path)
        for round_ in range(self.retries + 1):
            for index, url in failover.targets():
                try:
                    response = await self._http.request(method, url + path, json=json, headers=headers)
                except _RETRYABLE as exc:
                    failover.connection_failed(url, exc)
                    continue
                except httpx.TimeoutException as exc:
                    raise failover.timed_out(url) from exc
                if failover.answered(index, url, response):
                    if response.status_code >= 400:
                        raise _error_of(response)
                    return response
            await asyncio.sleep(failover.next_round(round_))
        raise AssertionError("unreachable")

    async def _call(self, model: type[M], method: str, path: str, **kwargs) -> M:
        return model.model_validate((await self._request(method, path, **kwargs)).json())

    async def healthz(self) -> bool:
        return (await self._request("GET", "/healthz")).json().get("status") == "ok"

    async def ready(self) -> Readiness:
        try:
            return await self._call(Readiness, "GET", "/readyz")
        except RetroHTTPError as exc:
            if exc.status_code == 503 and isinstance(exc.body, dict):
                return Readiness.model_validate(exc.body)
            raise

    async def index(self) -> IndexInfo:
        return await self._call(IndexInfo, "GET", "/v1/index")

    async def retrieve(self, text: str | Sequence[str], k: int = 2) -> RetrieveResponse:
        return await self._call(RetrieveResponse, "POST", "/v1/retrieve", json=_payload(_retrieve_request(text, k)))

    async def generate(self, prompt: str, **options) -> GenerateResponse:
        return await self._call(GenerateResponse, "POST", "/v1/generate", json=_payload(GenerateRequest(prompt=prompt, **options)))

    async def score(self, text: str, *, retrieval: bool = True, k: int | None = None) -> ScoreResponse:
        return await self._call(ScoreResponse, "POST", "/v1/score", json=_payload(ScoreRequest(text=text, retrieval=retrieval, k=k)))

    async def reload(self, token: str | None = None) -> ReloadResponse:
        return await self._call(ReloadResponse, "POST", "/admin/reload", headers=_auth(token or self.admin_token))

    async def metrics(self) -> str:
        return (await self._request("GET", "/metrics")).text
