"""Request limits: every input has a ceiling, and breaking one is a 4xx that names it."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from model.contracts.settings import Settings

LOG = logging.getLogger(__name__)


class LimitExceeded(Exception):
    """A request broke a configured limit; the handler turns it into a 4xx body naming the limit."""

    def __init__(self, limit: str, value: int, maximum: int, *, what: str, status_code: int = 422):
        self.limit = limit
        self.value = value
        self.maximum = maximum
        self.status_code = status_code
        super().__init__(f"{what} is {value}, over the limit {limit}={maximum}")


@dataclass(frozen=True)
class Limits:
    """The ceilings a request must stay under (from :class:`model.contracts.settings.Settings`)."""

    max_body_bytes: int
    max_prompt_tokens: int
    max_new_tokens: int
    max_k: int
    max_batch: int
    max_inflight: int
    max_query_chars: int = 8192

    @classmethod
    def from_settings(cls, settings: Settings) -> "Limits":
        return cls(
            max_body_bytes=settings.max_body_bytes,
            max_prompt_tokens=settings.max_prompt_tokens,
            max_new_tokens=settings.max_new_tokens,
            max_k=settings.max_k,
            max_batch=settings.max_batch,
            max_inflight=settings.max_inflight,
            max_query_chars=settings.max_query_chars,
        )

    def check_k(self, k: int) -> None:
        if k > self.max_k:
            raise LimitExceeded("max_k", k, self.max_k, what="k")

    def check_batch(self, n: int) -> None:
        if n > self.max_batch:
            raise LimitExceeded("max_batch", n, self.max_batch, what="the number of texts")

    def check_query_chars(self, texts: list[str]) -> None:
        # Checked before embedding: a megabyte of text would hold the shared embedder for seconds.
        for i, text in enumerate(texts):
            if len(text) > self.max_query_chars:
                raise LimitExceeded("max_query_chars", len(text), self.max_query_chars, what=f"the length of query {i} in characters")

    def check_prompt_bytes(self, text: str, longest_token_bytes: int, *, what: str = "the prompt's length in tokens") -> None:
        """Refuse, without tokenising, a text too long to fit ``max_prompt_tokens`` whatever its tokens.

        No token covers more than ``longest_token_bytes`` bytes, so a text of B bytes has at least
        B / longest_token_bytes tokens; tokenising a megabyte only to refuse it would waste a second.
        """
        size = len(text.encode("utf-8"))
        at_least = -(-size // max(longest_token_bytes, 1))
        if at_least > self.max_prompt_tokens:
            raise LimitExceeded("max_prompt_tokens", at_least, self.max_prompt_tokens, what=f"{what} (at least)")

    def check_prompt_tokens(self, n: int, *, what: str = "the prompt's length in tokens") -> None:
        if n > self.max_prompt_tokens:
            raise LimitExceeded("max_prompt_tokens", n, self.max_prompt_tokens, what=what)

    def check_new_tokens(self, n: int) -> None:
        if n > self.max_new_tokens:
            raise LimitExceeded("max_new_tokens", n, self.max_new_tokens, what="max_new_tokens")


class Admission:
    """Caps the requests doing model work at once; the next one is refused (503), not queued forever.

    Refusing beats queueing here: a queue the server cannot drain only turns a burst into
    timeouts for everyone, and a 503 tells the client at once to back off or go to another replica.
    """

    def __init__(self, max_inflight: int):
        self.max_inflight = max_inflight
        self.inflight = 0

    def enter(self) -> None:
        # Called on the event loop only, so the check and the increment cannot interleave.
        if self.inflight >= self.max_inflight:
            raise LimitExceeded(
                "max_inflight", self.inflight + 1, self.max_inflight, what="the number of requests in progress", status_code=503
            )
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1


class BodySizeLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, before the app parses them.

    A declared ``Content-Length`` over the limit is refused without reading the body; any other
    body is read up to the limit and then replayed to the app, so no client can make the server
    buffer more than ``max_bytes``.

    Args:
        app: the ASGI app to wrap.
        max_bytes: the largest body accepted.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _send_error(send, 400, {"detail": "Content-Length is not an integer"})
                return
            if size > self.max_bytes:
                await self._refuse(send, size)
                return

        # Read the whole body here (it is JSON, the app would buffer it anyway), stopping at the
        # limit, then replay it: the app never sees a body over the limit, declared or not.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await self._refuse(send, received)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for http.disconnect like the real channel

        await self.app(scope, replay, send)

    async def _refuse(self, send, size: int) -> None:
        LOG.info("refused a %d-byte request body (limit %d)", size, self.max_bytes)
        await _send_error(
            send,
            413,
            {
                "detail": f"the request body is {size} bytes or more, over the limit max_body_bytes={self.max_bytes}",
                "limit": "max_body_bytes",
                "maximum": self.max_bytes,
            },
        )


async def _send_error(send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})
