"""Guards in front of the admin HTTP API: per-client rate limits and a request-size cap."""

from __future__ import annotations

import math
import time

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from .admin_http_models import error_response


class TokenBucket:
    """Per-client token buckets: `rate` requests/s sustained, bursts up to `burst`.
    Keeps at most `max_clients` buckets (oldest dropped) so spoofed sources cannot grow it."""

    def __init__(self, rate: float, burst: float, max_clients: int = 10_000) -> None:
        self.rate, self.burst, self.max_clients = rate, burst, max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client → (tokens, last refill)

    def take(self, client: str, now: float | None = None) -> float:
        """0 if the request may pass, else seconds until it would."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if len(self._buckets) >= self.max_clients:
            self._buckets.pop(next(iter(self._buckets)))
        if tokens >= 1:
            self._buckets[client] = (tokens - 1, now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1 - tokens) / self.rate


class GuardMiddleware:
    """Pure ASGI (no body buffering): rejects bodies over `max_body` with 413 and rate-limits
    `/api/admin/*` per client address with 429 + Retry-After."""

    def __init__(
        self, app: ASGIApp, *, limiter: TokenBucket | None, max_body: int, api_prefix: str
    ) -> None:
        self.app, self.limiter, self.max_body = app, limiter, max_body
        self.api_prefix = api_prefix  # only API calls are rate-limited, not the dashboard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body:
            await error_response(
                413, "PAYLOAD_TOO_LARGE", f"bodies are limited to {self.max_body} bytes", []
            )(scope, receive, send)
            return
        if self.limiter is not None and scope["path"].startswith(self.api_prefix + "/"):
            client = (scope.get("client") or ("unknown", 0))[0]
            wait = self.limiter.take(client)
            if wait > 0:
                response = error_response(429, "RATE_LIMITED", "too many requests; slow down", [])
                response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
                await response(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> AsgiMessage:
            # Chunked bodies have no content-length: count as they stream in.
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise StarletteHTTPException(413, "body too large")
            return message

        await self.app(scope, limited_receive, send)
