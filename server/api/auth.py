"""Who may call what: admin bearer tokens and per-application API keys, checked as the
server looks a method's handler up.

Not a `grpc.aio.ServerInterceptor`: grpc.aio runs interceptors as a chain of coroutines on
every call (with `inspect` checks on each), which cost ResolveModel about a tenth of the
server's per-call time even with no key configured. `Authorizer.guard` wraps each
service's generic handler instead, so the lookup the server does anyway returns the
checked handler: open calls pay one dict lookup and one snapshot read.

- `modelroute.admin.v1.AdminService/*` needs `authorization: Bearer <token>` when admin
  tokens are configured (env `MODELROUTE_ADMIN_TOKENS` and/or a token file). Tokens are
  compared in constant time against every configured token, without early exit.
- `modelroute.v1.ModelRouterService/*` needs `x-api-key: <key>` as soon as one
  `clients/<name>` key exists in etcd. The key is hashed (SHA-256) and looked up in the
  current snapshot's dict, so the check costs one hash and one dict lookup per call and
  follows config hot reloads with no restart. A client limited to some contexts gets
  PERMISSION_DENIED for the others.

Secrets (tokens, keys) never appear in logs or error messages; a client name does.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final

import grpc
from modelroute.admin.v1 import admin_pb2
from modelroute.v1 import router_pb2

from ..core.snapshot import ClientSpec, Snapshot
from ..runtime.change_meta import ACTOR_OPERATOR, CURRENT_ACTOR
from .errors import ServiceError, ServicerContext

log = logging.getLogger("modelroute.auth")

ADMIN_TOKENS_ENV: Final = "MODELROUTE_ADMIN_TOKENS"
API_KEY_HEADER: Final = "x-api-key"
ADMIN_PREFIX: Final = "/" + admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name + "/"
ROUTER_PREFIX: Final = (
    "/" + router_pb2.DESCRIPTOR.services_by_name["ModelRouterService"].full_name + "/"
)
# Re-read the token file at most this often (a stat per admin call would be cheap too,
# but admin dashboards poll; this keeps it to one syscall per second).
_FILE_CHECK_SECONDS: Final = 1.0


class AdminTokenFileError(ValueError):
    """The admin token file cannot be read at start (the server refuses to run open)."""


def parse_bearer(header_value: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` value (scheme case-insensitive, as
    RFC 7235 says), or None when absent or another scheme."""
    if not header_value:
        return None
    scheme, _, token = header_value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _split_tokens(lines: Iterable[str]) -> list[str]:
    """Non-empty entries; `#` starts a comment line in the file."""
    out = []
    for line in lines:
        for item in line.split(","):
            item = item.strip()
            if item and not item.startswith("#"):
                out.append(item)
    return out


# `name:token` names a token (the name is what config history records as the actor);
# a bare token is named `operator`.
_NAMED_TOKEN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._@-]{0,63}):(.+)$")


def _named(entries: Iterable[str]) -> tuple[tuple[str, bytes], ...]:
    out = []
    for entry in entries:
        match = _NAMED_TOKEN.match(entry)
        name, token = (match.group(1), match.group(2)) if match else (ACTOR_OPERATOR, entry)
        out.append((name, token.encode()))
    return tuple(out)


class AdminTokens:
    """The admin bearer tokens: from the environment and/or a file (one per line).

    The file is re-read when its modification time or size changes, so tokens can be
    rotated without a restart (write the new token, reload clients, remove the old one).
    If the file becomes unreadable, the tokens read last stay in force.
    """

    def __init__(
        self,
        tokens: Iterable[str] = (),
        *,
        token_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._static = _named(_split_tokens(tokens))
        self._file = token_file
        self._file_tokens: tuple[tuple[str, bytes], ...] = ()
        self._file_stamp: tuple[int, int] | None = None
        self._checked_at = float("-inf")
        self._clock = clock
        self._lock = threading.Lock()
        if token_file is not None:
            self._reload_file(force=True)

    @classmethod
    def from_environment(
        cls, token_file: Path | None = None, environ: Mapping[str, str] | None = None
    ) -> AdminTokens:
        env = os.environ if environ is None else environ
        return cls(_split_tokens([env.get(ADMIN_TOKENS_ENV, "")]), token_file=token_file)

    @property
    def configured(self) -> bool:
        """False: admin is open (local development)."""
        return bool(self._current())

    @property
    def count(self) -> int:
        return len(self._current())

    def _current(self) -> tuple[tuple[str, bytes], ...]:
        if self._file is not None and self._clock() - self._checked_at >= _FILE_CHECK_SECONDS:
            self._reload_file()
        return self._static + self._file_tokens

    def _reload_file(self, *, force: bool = False) -> None:
        assert self._file is not None
        with self._lock:
            self._checked_at = self._clock()
            try:
                stat = self._file.stat()
                stamp = (stat.st_mtime_ns, stat.st_size)
                if not force and stamp == self._file_stamp:
                    return
                tokens = _split_tokens(self._file.read_text().splitlines())
            except OSError as exc:
                if force:
                    # At start a missing file is a configuration error: refuse to run open.
                    raise AdminTokenFileError(
                        f"cannot read admin token file {self._file}: {exc}"
                    ) from exc
                log.warning(
                    "cannot re-read admin token file %s (%s); keeping the %d token(s) read last",
                    self._file,
                    exc.strerror or type(exc).__name__,
                    len(self._file_tokens),
                )
                return
            if not force:
                log.info("admin token file %s changed: %d token(s)", self._file, len(tokens))
            self._file_tokens = _named(tokens)
            self._file_stamp = stamp

    def verify(self, presented: str | None) -> bool:
        """True when `presented` equals one configured token, or when none is configured."""
        return self.name_of(presented) is not None

    def name_of(self, presented: str | None) -> str | None:
        """The name of the token `presented` equals (`operator` when none is configured
        or the token has no name), or None when it matches none.

        Every token is compared (hmac.compare_digest, no early exit), so the time taken
        does not reveal which token, or how much of one, matched.
        """
        tokens = self._current()
        if not tokens:
            return ACTOR_OPERATOR
        if presented is None:
            return None
        candidate = presented.encode()
        matched: str | None = None
        for name, token in tokens:
            if hmac.compare_digest(candidate, token):
                matched = name
        return matched


def key_digest(api_key: str) -> str:
    """Lowercase hex SHA-256 of an API key: what `clients/<name>.key_sha256` holds."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def _metadata_value(metadata: Sequence[tuple[str, str | bytes]] | None, name: str) -> str | None:
    for key, value in metadata or ():
        if key == name:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


def unauthenticated(message: str, reason: str = "UNAUTHENTICATED") -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAUTHENTICATED, reason, message)


def _permission_denied(client: ClientSpec, context: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.PERMISSION_DENIED,
        "CONTEXT_NOT_ALLOWED",
        f"client {client.name!r} may not use context {context[:128]!r} "
        f"(see allowed_contexts of clients/{client.name})",
        metadata={"client": client.name, "context": context[:128]},
    )


# The contexts a request names, per application method. Methods not listed name none
# (ListModels, WatchConfig): a valid key is enough.
ContextsOf = Callable[[Any], Iterable[str]]


def _request_contexts(decision_context: Callable[[str], str | None]) -> dict[str, ContextsOf]:
    def feedback(request: Any) -> Iterable[str]:
        # The decision id names its context; malformed/unknown ids are the handler's to report.
        found = decision_context(request.decision_id)
        return [found] if found else []

    return {
        "ResolveModel": lambda r: [r.context],
        "ReportUsage": lambda r: {report.context for report in r.reports},
        "SubmitFeedback": feedback,
        "GetUserPreference": lambda r: [r.context] if r.context else [],
        "SetUserPreference": lambda r: [r.context] if r.context else [],
    }


class Authorizer:
    """Checks admin tokens and application API keys before any handler runs.

    Health and reflection stay open (load balancers and tooling call them unauthenticated).
    """

    def __init__(
        self,
        admin_tokens: AdminTokens,
        snapshot: Callable[[], Snapshot | None],
        *,
        decision_context: Callable[[str], str | None] = lambda _: None,
    ) -> None:
        self._admin = admin_tokens
        self._snapshot = snapshot
        self._contexts = _request_contexts(decision_context)

    def guard(self, handlers: grpc.GenericRpcHandler) -> grpc.GenericRpcHandler:
        """`handlers` (a service's generic handler) with every method it serves checked."""
        return _GuardedHandlers(handlers, self)

    def authorize(
        self, method: str, metadata: Any, handler: grpc.RpcMethodHandler
    ) -> grpc.RpcMethodHandler:
        """`handler` as the caller may run it: as is, or refusing with the right status."""
        if method.startswith(ADMIN_PREFIX):
            checked = self._check_admin(metadata)
            if isinstance(checked, ServiceError):
                error = checked
                return _refusing(handler, lambda _request: error)
            return _refusing(handler, partial(_as_actor, checked))
        if method.startswith(ROUTER_PREFIX):
            contexts_of = self._contexts.get(method[len(ROUTER_PREFIX) :])
            return self._checking_api_key(handler, metadata, contexts_of)
        return handler

    def _check_admin(self, metadata: Any) -> ServiceError | str:
        """The caller's token name, or the error refusing the call."""
        if not self._admin.configured:
            return ACTOR_OPERATOR
        header = _metadata_value(metadata, "authorization")
        if header is None:
            return unauthenticated(
                "admin calls need the metadata `authorization: Bearer <token>` "
                "(tokens: MODELROUTE_ADMIN_TOKENS or --admin-token-file)"
            )
        token = parse_bearer(header)
        if token is None:
            return unauthenticated("the authorization metadata must be `Bearer <token>`")
        name = self._admin.name_of(token)
        if name is None:
            return unauthenticated("the admin token is not valid")
        return name

    def _checking_api_key(
        self,
        handler: grpc.RpcMethodHandler,
        metadata: Any,
        contexts_of: ContextsOf | None,
    ) -> grpc.RpcMethodHandler:
        snapshot = self._snapshot()
        if snapshot is None or not snapshot.clients:
            return handler  # no clients configured: application calls are open
        presented = _metadata_value(metadata, API_KEY_HEADER)
        if not presented:
            error = unauthenticated(
                f"this server requires an API key: send the metadata `{API_KEY_HEADER}: <key>`",
                "API_KEY_MISSING",
            )
            return _refusing(handler, lambda _request: error)
        client = snapshot.clients_by_key.get(key_digest(presented))
        if client is None or not client.enabled:
            # Same answer for unknown and disabled keys: do not confirm a key exists.
            error = unauthenticated("the API key is not valid", "API_KEY_INVALID")
            return _refusing(handler, lambda _request: error)
        if contexts_of is None or client.allowed is None:
            return handler

        def check(request: Any) -> ServiceError | None:
            if request is None:
                return None
            for context in contexts_of(request):
                if not client.allows(context):
                    return _permission_denied(client, context)
            return None

        return _refusing(handler, check)


class _GuardedHandlers(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc: untyped
    def __init__(self, inner: grpc.GenericRpcHandler, authorizer: Authorizer) -> None:
        self._inner = inner
        self._authorizer = authorizer

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(details)
        if handler is None:
            return None
        return self._authorizer.authorize(details.method, details.invocation_metadata, handler)


class GuardedServer:
    """What the generated `add_*Servicer_to_server` functions call, registering every
    handler through `authorizer.guard` on `server`."""

    def __init__(self, server: grpc.aio.Server, authorizer: Authorizer) -> None:
        self._server = server
        self._authorizer = authorizer

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(map(self._authorizer.guard, handlers)))

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        """Not passed on: the generated code registers the same methods generically too,
        and grpc.aio lets this table take precedence, which would skip `guard`."""


def _as_actor(name: str, _request: Any) -> None:
    """Runs in the handler's task just before the method: changes it writes carry `name`."""
    CURRENT_ACTOR.set(name)


def _refusing(
    handler: grpc.RpcMethodHandler, check: Callable[[Any], ServiceError | None]
) -> grpc.RpcMethodHandler:
    """The same handler (same (de)serializers and streaming kind) with `check` run on the
    request first; a returned error aborts the call instead of running the method."""
    h: Any = handler

    async def _abort_if_refused(request: Any, context: ServicerContext) -> None:
        error = check(request)
        if error is not None:
            await error.abort(context)

    if h.unary_unary is not None:
        behavior = h.unary_unary

        async def unary_unary(request: Any, context: ServicerContext) -> Any:
            await _abort_if_refused(request, context)
            return await behavior(request, context)

        return h._replace(unary_unary=unary_unary)
    if h.unary_stream is not None:
        stream_behavior = h.unary_stream

        async def unary_stream(request: Any, context: ServicerContext) -> Any:
            await _abort_if_refused(request, context)
            async for item in stream_behavior(request, context):
                yield item

        return h._replace(unary_stream=unary_stream)
    # Client-streaming methods: refuse before reading the stream (the check sees no request).
    if h.stream_unary is not None:
        client_stream = h.stream_unary

        async def stream_unary(requests: Any, context: ServicerContext) -> Any:
            await _abort_if_refused(None, context)
            return await client_stream(requests, context)

        return h._replace(stream_unary=stream_unary)
    bidi = h.stream_stream

    async def stream_stream(requests: Any, context: ServicerContext) -> Any:
        await _abort_if_refused(None, context)
        async for item in bidi(requests, context):
            yield item

    return h._replace(stream_stream=stream_stream)
