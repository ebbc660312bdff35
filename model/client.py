"""Python client of the RETRO server (``RetroClient``, ``AsyncRetroClient``); imports no torch or faiss.

Example:
    >>> with RetroClient("http://127.0.0.1:8000") as client:        # doctest: +SKIP
    ...     hits = client.retrieve("who runs the harbour now?", k=2)
    ...     print(hits.index_version, hits.results[0][0].url)
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
    def __init__(self, url: str, *, timeout: float, retries: int, backoff_s: float, admin_token: str | None):
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.admin_token = admin_token

    def _delay(self, attempt: int) -> float:
        return self.backoff_s * (2**attempt)

    def _failed(self, exc: Exception, method: str, path: str) -> RetroError:
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return RetroTimeout(f"{method} {self.url}{path} timed out after {self.timeout}s")
        return RetroConnectionError(f"{method} {self.url}{path} failed after {self.retries + 1} attempts: {type(exc).__name__}: {exc}")


def _retrieve_request(text: str | Sequence[str], k: int) -> RetrieveRequest:
    if isinstance(text, str):
        return RetrieveRequest(text=text, k=k)
    return RetrieveRequest(texts=list(text), k=k)


class RetroClient(_Base):
    """Blocking client of one RETRO server.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8000``.
        timeout: seconds to wait for each answer (generation of many tokens can take a while).
        retries: extra attempts after a connection error (not after an HTTP error answer).
        backoff_s: wait before the first retry; doubles each time.
        admin_token: bearer token for :meth:`reload`.
        transport: an httpx transport (for tests or custom networking).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        retries: int = 2,
        backoff_s: float = 0.2,
        admin_token: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        super().__init__(url, timeout=timeout, retries=retries, backoff_s=backoff_s, admin_token=admin_token)
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def __enter__(self) -> "RetroClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, *, json: dict | None = None, headers: dict | None = None) -> httpx.Response:
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, json=json, headers=headers)
            except _RETRYABLE as exc:
                if attempt == self.retries:
                    raise self._failed(exc, method, path) from exc
                LOG.debug("%s %s: %s; retrying", method, path, exc)
                time.sleep(self._delay(attempt))
                continue
            except httpx.TimeoutException as exc:
                raise self._failed(exc, method, path) from exc
            if response.status_code >= 400:
                raise _error_of(response)
            return response
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
    """Asyncio client of one RETRO server; same methods as :class:`RetroClient`, awaited.

    Args:
        url: the server's base URL.
        timeout: seconds to wait for each answer.
        retries: extra attempts after a connection error.
        backoff_s: wait before the first retry; doubles each time.
        admin_token: bearer token for :meth:`reload`.
        max_connections: size of the connection pool (concurrent requests in flight).
        transport: an httpx async transport.
    """

    def __init__(
        self,
        url: str,
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
            base_url=self.url,
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
        for attempt in range(self.retries + 1):
            try:
                response = await self._http.request(method, path, json=json, headers=headers)
            except _RETRYABLE as exc:
                if attempt == self.retries:
                    raise self._failed(exc, method, path) from exc
                LOG.debug("%s %s: %s; retrying", method, path, exc)
                await asyncio.sleep(self._delay(attempt))
                continue
            except httpx.TimeoutException as exc:
                raise self._failed(exc, method, path) from exc
            if response.status_code >= 400:
                raise _error_of(response)
            return response
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
