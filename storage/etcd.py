"""etcd access behind one small interface: connect, read the prefix, watch it, write it.

Client: aetcd (asyncio, maintained). Its `watch` API flattens WatchResponses into single
events, which loses the revision boundaries we need to apply all keys of one revision
together, so the watch stream is driven through the etcd `Watch` RPC on aetcd's own
channel (aetcd ships the generated stubs); everything else uses aetcd's API.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeAlias

import aetcd
import grpc
from aetcd import rpc as etcd_rpc
from aetcd.utils import prefix_range_end

from .errors import StoreUnavailableError
from .updates import ConfigUpdate, StoredValue

log = logging.getLogger("modelroute.etcd")

# The client type callers hold and pass back to these functions; only the wiring creates
# one (`connect`), so modules above storage never import aetcd themselves.
EtcdClient: TypeAlias = aetcd.Client
# What a lost or failing etcd connection raises through aetcd.
ETCD_FAILURES: Final = (aetcd.exceptions.ClientError, grpc.RpcError, ConnectionError, OSError)

DEFAULT_PREFIX: Final = "/modelroute/"
_CHANNEL_OPTIONS: Final = {
    # Detect a dead or partitioned etcd within seconds instead of at TCP timeout, but stay
    # within etcd's keepalive policy (min 5 s between pings, none without an open stream),
    # or etcd answers GOAWAY "too_many_pings" and drops the watch.
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 0,
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 2_000,
}


class EtcdConflictError(Exception):
    """The prefix changed after the revision the caller based its change on."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One etcd member address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_endpoints(text: str | Sequence[str]) -> list[Endpoint]:
    """`127.0.0.1:2379,http://10.0.0.2:2379` → endpoints (scheme optional, port default 2379)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    endpoints = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        item = item.split("://", 1)[-1].rstrip("/")
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "2379")
        if not port.isdigit():
            raise ValueError(f"invalid etcd endpoint {item!r}: expected host:port")
        endpoints.append(Endpoint(host.strip("[]") or "127.0.0.1", int(port)))
    if not endpoints:
        raise ValueError("no etcd endpoint given")
    return endpoints


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class EtcdTls:
    """Client TLS towards etcd (`--etcd-ca`, `--etcd-cert`, `--etcd-key`).

    The CA alone verifies etcd's certificate; cert + key also present a client certificate
    (etcd's `--client-cert-auth`). Files are read when a connection is opened.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("--etcd-cert and --etcd-key must be given together")

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials for gRPC from the configured files (read now)."""

        def read(path: Path | None, what: str) -> bytes | None:
            if path is None:
                return None
            try:
                return path.read_bytes()
            except OSError as exc:  # name the file, never its contents
                raise ConnectionError(f"cannot read etcd {what} {path}: {exc.strerror}") from None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca, "CA"),
            private_key=read(self.key, "client key"),
            certificate_chain=read(self.cert, "client certificate"),
        )


class _TlsClient(aetcd.Client):  # type: ignore[misc]  # aetcd: untyped
    """aetcd.Client over a TLS channel.

    aetcd 1.x only opens insecure channels, so this repeats its `connect()` with
    `secure_channel` (same stubs, same auth handshake).
    """

    def __init__(self, tls: EtcdTls, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tls = tls

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:  # type: ignore[has-type]
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        try:
            self._is_connecting = True
            target = f"{self._host}:{self._port}"
            self.channel = etcd_rpc.secure_channel(
                target, self._tls.credentials(), options=self._options.items()
            )
            if self._username is not None and self._password is not None:
                self.auth_stub = etcd_rpc.AuthStub(self.channel)
                request = etcd_rpc.AuthenticateRequest(name=self._username, password=self._password)
                try:
                    response = await self.auth_stub.Authenticate(request, timeout=self._timeout)
                except etcd_rpc.AioRpcError as exc:
                    aetcd.exceptions._handle_exception(exc)  # raises aetcd's mapped error
                    raise
                self.metadata = (("token", response.token),)
            self.kvstub = etcd_rpc.KVStub(self.channel)
            self.clusterstub = etcd_rpc.ClusterStub(self.channel)
            self.leasestub = etcd_rpc.LeaseStub(self.channel)
            self.maintenancestub = etcd_rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd.watcher.Watcher(
                etcd_rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        finally:
            self._is_connecting = False


def connect(
    endpoints: Sequence[Endpoint],
    *,
    timeout: float = 5.0,
    username: str | None = None,
    password: str | None = None,
    tls: EtcdTls | None = None,
) -> aetcd.Client:
    """A client that fails over between all endpoints of a cluster.

    aetcd builds its gRPC target as `host:port`; with several IP endpoints we hand it a
    gRPC `ipv4:`/`ipv6:` address list instead, so the channel itself moves to a live
    member when one dies. Hostnames cannot be listed that way; the first one is used.
    """
    hosts = [("127.0.0.1" if e.host == "localhost" else e.host) for e in endpoints]
    if len(endpoints) > 1 and all(_is_ip(h) for h in hosts):
        family = "ipv6" if ":" in hosts[0] else "ipv4"
        fmt = "[{}]:{}" if family == "ipv6" else "{}:{}"
        head = ",".join(
            fmt.format(h, e.port) for h, e in zip(hosts[:-1], endpoints[:-1], strict=True)
        )
        last = f"[{hosts[-1]}]" if family == "ipv6" else hosts[-1]
        host, port = f"{family}:{head},{last}", endpoints[-1].port
    else:
        host, port = hosts[0], endpoints[0].port
    settings: dict[str, Any] = {
        "host": host,
        "port": port,
        "username": username,
        "password": password,
        "timeout": timeout,  # aetcd annotates int; grpc takes float
        "options": dict(_CHANNEL_OPTIONS),
    }
    return aetcd.Client(**settings) if tls is None else _TlsClient(tls, **settings)


async def head_revision(client: aetcd.Client, key: str) -> int:
    """Etcd's current revision, read through a get of `key` (cheap: one key at most).

    Raises:
        StoreUnavailableError: etcd cannot be reached.
    """
    try:
        return int((await client.get_prefix(key.encode())).header.revision)
    except ETCD_FAILURES as exc:
        raise StoreUnavailableError("etcd", str(exc) or type(exc).__name__) from exc


async def read_prefix(client: aetcd.Client, prefix: str) -> tuple[int, dict[str, StoredValue]]:
    """All keys under the prefix (relative names) and the revision they were read at.

    Raises:
        StoreUnavailableError: etcd cannot be reached.
    """
    try:
        result = await client.get_prefix(prefix.encode())
    except StoreUnavailableError:
        raise
    except ETCD_FAILURES as exc:
        raise StoreUnavailableError("etcd", str(exc) or type(exc).__name__) from exc
    values = {
        kv.key.decode()[len(prefix) :]: StoredValue(kv.value, kv.mod_revision) for kv in result.kvs
    }
    return result.header.revision, values


class EtcdConfigSource:
    """Streams the prefix: one full read at revision R, then a watch from R+1.

    On a compaction, a cancelled watch or a lost connection it re-reads the whole prefix
    (events may have been missed) and watches again, forever, with capped backoff.
    `connected` / `disconnected_since` feed status and health reporting.
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        prefix: str = DEFAULT_PREFIX,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: EtcdTls | None = None,
    ) -> None:
        self.endpoints = list(endpoints)
        self.prefix = prefix
        self._credentials = (username, password)
        self._tls = tls
        self.connected = False
        self.disconnected_since: datetime | None = None
        self.last_error = ""

    def _mark_disconnected(self, error: BaseException) -> None:
        if self.connected or self.disconnected_since is None:
            self.disconnected_since = datetime.now(UTC)
            log.warning("etcd unreachable at %s: %s", self.endpoints_text, error)
        self.connected = False
        self.last_error = str(error) or type(error).__name__

    @property
    def endpoints_text(self) -> str:
        """The endpoints as given on the command line, comma-separated."""
        return ",".join(str(e) for e in self.endpoints)

    async def updates(self) -> AsyncIterator[ConfigUpdate]:
        """Yield the full prefix, then every revision's changes, resyncing forever."""
        backoff = 0.05
        while True:
            client = connect(
                self.endpoints,
                username=self._credentials[0],
                password=self._credentials[1],
                tls=self._tls,
            )
            try:
                revision, values = await read_prefix(client, self.prefix)
                if not self.connected and self.disconnected_since is not None:
                    log.info("etcd reachable again; resynced at revision %d", revision)
                self.connected, self.disconnected_since, backoff = True, None, 0.05
                yield ConfigUpdate(
                    revision,
                    {k: v.value for k, v in values.items()},
                    True,
                    {k: v.mod_revision for k, v in values.items()},
                )
                async for update in self._watch(client, revision + 1):
                    yield update
            except asyncio.CancelledError:
                raise
            except ResyncNeededError as exc:
                log.info("etcd watch needs a full re-read: %s", exc)
            except Exception as exc:  # noqa: BLE001 - any failure means: reconnect and resync
                self._mark_disconnected(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                await _close_quietly(client)

    async def _watch(
        self, client: aetcd.Client, start_revision: int
    ) -> AsyncIterator[ConfigUpdate]:
        await client.connect()
        key = self.prefix.encode()
        create = etcd_rpc.WatchRequest(
            create_request=etcd_rpc.WatchCreateRequest(
                key=key,
                range_end=prefix_range_end(key),
                start_revision=start_revision,
                progress_notify=True,
            )
        )
        stop = asyncio.Event()

        async def requests() -> AsyncIterator[Any]:
            yield create
            await stop.wait()  # keep the request stream open for the life of the watch

        stub = etcd_rpc.WatchStub(client.channel)
        call = stub.Watch(requests(), metadata=client.metadata)
        try:
            async for response in call:
                if response.compact_revision:
                    raise ResyncNeededError(f"revision compacted at {response.compact_revision}")
                if response.canceled:
                    raise ResyncNeededError(f"watch cancelled by etcd: {response.cancel_reason}")
                for update in _group_by_revision(response.events, self.prefix):
                    yield update
            raise ConnectionError("etcd closed the watch stream")
        finally:
            stop.set()
            call.cancel()


class ResyncNeededError(Exception):
    """The watch cannot continue (compaction, cancellation): read everything again."""

    pass


def _group_by_revision(events: Sequence[Any], prefix: str) -> list[ConfigUpdate]:
    """One update per revision: a transaction's keys arrive and apply together."""
    grouped: dict[int, dict[str, bytes | None]] = {}
    for event in events:
        kv = event.kv
        changes = grouped.setdefault(kv.mod_revision, {})
        deleted = event.type == etcd_rpc.Event.EventType.DELETE
        changes[kv.key.decode()[len(prefix) :]] = None if deleted else kv.value
    return [ConfigUpdate(rev, changes, False) for rev, changes in sorted(grouped.items())]


async def _close_quietly(client: aetcd.Client) -> None:
    try:
        await client.close()
    except Exception:  # noqa: BLE001 - closing a broken channel may fail; nothing to do
        pass


async def write_changes(
    client: aetcd.Client,
    prefix: str,
    changes: Mapping[str, bytes | None],
    expected_revision: int,
    guarded_dirs: Sequence[str],
) -> int:
    """Write all changes in one transaction, guarded by `expected_revision`.

    Fails with EtcdConflictError if any key under `guarded_dirs` (relative) was modified
    after `expected_revision` (0: unconditional).

    The guard compares mod_revision over each directory range (or single key), so it
    catches concurrent puts anywhere in those sections; a concurrent *delete* leaves no key
    behind to compare. Callers that must see deletions also guard a key every such change
    writes (the server guards its change companion key: `change_meta.CHANGE_GUARD`); a raw
    `etcdctl del` stays undetected. `runtime/` is otherwise not guarded: servers write
    there continuously.
    """
    tx = client.transactions
    compare = []
    if expected_revision:
        for directory in guarded_dirs:
            start = (prefix + directory).encode()
            end = prefix_range_end(start) if directory.endswith("/") else None
            compare.append(tx.mod(start, range_end=end) < expected_revision + 1)
    ops = [
        tx.delete((prefix + key).encode())
        if value is None
        else tx.put((prefix + key).encode(), value)
        for key, value in changes.items()
    ]
    try:
        succeeded, responses = await client.transaction(compare=compare, success=ops, failure=[])
    except ETCD_FAILURES as exc:
        raise StoreUnavailableError("etcd", str(exc) or type(exc).__name__) from exc
    if not succeeded:
        raise EtcdConflictError(
            f"the configuration changed after revision {expected_revision}; "
            "re-read it and apply again"
        )
    if not ops:
        return expected_revision
    response = responses[-1]
    header_revision: int = getattr(response, response.WhichOneof("response")).header.revision
    return header_revision
