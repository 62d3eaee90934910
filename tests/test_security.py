"""Security against real servers: admin bearer tokens, per-client API keys from etcd,
TLS / mTLS on the gRPC port, etcd over mutual TLS, and no secret in the logs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aetcd
import grpc
import pytest
from google.protobuf import message_factory
from modelroute.admin.v1 import admin_pb2
from modelroute.server.api.auth import AdminTokens, parse_bearer
from modelroute.server.api.errors import decode_details
from modelroute.storage.embedded_etcd import etcd_binary, free_port
from modelroute.storage.etcd import EtcdTls, connect, parse_endpoints, read_prefix
from modelroute.v1 import router_pb2, router_pb2_grpc, types_pb2

from tests.helpers import Pki, Running, eventually

StartServer = Callable[..., Awaitable[Running]]
TOKEN = "s3cret-admin-token-0123456789"
ADMIN = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def call_admin(
    channel: grpc.aio.Channel, method_name: str, metadata: tuple[tuple[str, str], ...] = ()
) -> grpc.StatusCode:
    """Call any AdminService method with an empty request; the status code it ends with."""
    method = ADMIN.methods_by_name[method_name]
    request = message_factory.GetMessageClass(method.input_type)()
    path = f"/{ADMIN.full_name}/{method.name}"
    try:
        if method.server_streaming:
            stream = channel.unary_stream(path, request_serializer=type(request).SerializeToString)
            async for _ in stream(request, metadata=metadata, timeout=10):
                break
        else:
            unary = channel.unary_unary(path, request_serializer=type(request).SerializeToString)
            await unary(request, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


# --- admin tokens ---------------------------------------------------------------------


@pytest.mark.parametrize("method_name", sorted(ADMIN.methods_by_name))
async def test_every_admin_method_refuses_calls_without_a_valid_token(
    seed: int, start_server: StartServer, method_name: str
) -> None:
    running = await start_server(admin_tokens=[TOKEN])
    assert await call_admin(running.channel, method_name) == grpc.StatusCode.UNAUTHENTICATED
    wrong = await call_admin(running.channel, method_name, bearer("not-the-token"))
    assert wrong == grpc.StatusCode.UNAUTHENTICATED
    basic = (("authorization", f"Basic {TOKEN}"),)
    assert await call_admin(running.channel, method_name, basic) == grpc.StatusCode.UNAUTHENTICATED
    # With the token the method runs (it may still dislike the empty request).
    assert await call_admin(running.channel, method_name, bearer(TOKEN)) not in {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }


async def test_admin_token_works_and_refusal_explains_what_to_send(
    seed: int, start_server: StartServer, etcd: aetcd.Client, prefix: str
) -> None:
    running = await start_server(admin_tokens=["old-token", TOKEN])
    status = await running.admin.GetConfigStatus(
        admin_pb2.GetConfigStatusRequest(), metadata=bearer(TOKEN)
    )
    assert status.config_revision >= seed
    # An unauthenticated ApplyConfig writes nothing.
    change = admin_pb2.KeyChange(key="overrides/rag.answer", value_json='{"model": "gpt-4o"}')
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await running.admin.ApplyConfig(
            admin_pb2.ApplyConfigRequest(changes=[change]), metadata=bearer("guess")
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "guess" not in (refused.value.details() or "")
    assert (await etcd.get((prefix + "overrides/rag.answer").encode())) is None
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await running.admin.GetConfigStatus(admin_pb2.GetConfigStatusRequest())
    assert "authorization: Bearer" in (missing.value.details() or "")


async def test_token_file_is_reread_when_it_changes(
    seed: int, start_server: StartServer, tmp_path: Path
) -> None:
    token_file = tmp_path / "admin-tokens"
    token_file.write_text("# operators\nfirst-token\n")
    running = await start_server(admin_tokens=[], admin_token_file=token_file)
    request = admin_pb2.GetConfigStatusRequest()
    await running.admin.GetConfigStatus(request, metadata=bearer("first-token"))
    token_file.write_text("second-token\n")

    async def rotated() -> None:
        await running.admin.GetConfigStatus(request, metadata=bearer("second-token"))
        with pytest.raises(grpc.aio.AioRpcError):
            await running.admin.GetConfigStatus(request, metadata=bearer("first-token"))

    await eventually(rotated, timeout=5, interval=0.1)


async def test_without_tokens_admin_is_open_with_a_warning(
    seed: int, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="modelroute")
    running = await start_server(admin_tokens=[])
    await running.admin.GetConfigStatus(admin_pb2.GetConfigStatusRequest())
    assert "no admin token configured" in caplog.text


async def test_secrets_never_reach_the_logs(
    seed: int,
    start_server: StartServer,
    etcd: aetcd.Client,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    api_key = "app-key-that-must-stay-secret"
    running = await start_server(admin_tokens=[TOKEN])
    assert "no admin token configured" not in caplog.text
    await put_client(etcd, prefix, "app", key_sha256=sha(api_key))
    await eventually(lambda: expect_code(running, grpc.StatusCode.UNAUTHENTICATED, key=None))
    await running.router.ResolveModel(resolve("rag.answer"), metadata=key_md(api_key))
    await expect_code(running, grpc.StatusCode.UNAUTHENTICATED, key=api_key + "x")
    await running.admin.GetConfigStatus(admin_pb2.GetConfigStatusRequest(), metadata=bearer(TOKEN))
    await call_admin(running.channel, "GetConfigStatus", bearer(TOKEN + "x"))
    # A key pasted where its hash belongs is rejected without being repeated.
    await put_client(etcd, prefix, "pasted", key_sha256="sk-live-pasted-by-mistake")
    status = await eventually(lambda: rejected_status(running, "clients/pasted", TOKEN))
    assert "sk-live-pasted" not in str(status.rejected_keys)
    await running.close()
    for secret in (TOKEN, api_key, "sk-live-pasted"):
        assert secret not in caplog.text


def test_admin_tokens_verify_and_bearer_parsing() -> None:
    """The pieces the admin HTTP API reuses."""
    tokens = AdminTokens(["a-token,b-token", " c-token "])
    assert tokens.configured and tokens.count == 3
    assert all(tokens.verify(t) for t in ("a-token", "b-token", "c-token"))
    assert not any(tokens.verify(t) for t in (None, "", "a-toke", "a-token ", "A-TOKEN"))
    assert AdminTokens().verify(None)  # nothing configured: open
    assert parse_bearer("Bearer abc") == "abc"
    assert parse_bearer("bearer  abc ") == "abc"
    assert parse_bearer("Basic abc") is None
    assert parse_bearer("Bearer") is None
    assert parse_bearer(None) is None


# --- API keys -------------------------------------------------------------------------


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_md(key: str) -> tuple[tuple[str, str]]:
    return (("x-api-key", key),)


def resolve(context: str) -> router_pb2.ResolveModelRequest:
    return router_pb2.ResolveModelRequest(context=context, user=types_pb2.User(id="u1"))


async def put_client(etcd: aetcd.Client, prefix: str, name: str, **value: object) -> None:
    await etcd.put((prefix + f"clients/{name}").encode(), json.dumps(value).encode())


async def expect_code(
    running: Running, code: grpc.StatusCode, *, key: str | None, context: str = "rag.answer"
) -> grpc.aio.AioRpcError:
    # No pytest.raises: its failure is not an AssertionError, which `eventually` retries.
    try:
        await running.router.ResolveModel(
            resolve(context), metadata=key_md(key) if key is not None else ()
        )
    except grpc.aio.AioRpcError as error:
        assert error.code() == code, error.details()
        return error
    raise AssertionError(f"expected {code.name}, the call succeeded")


async def rejected_status(
    running: Running, key: str, token: str | None = None
) -> admin_pb2.GetConfigStatusResponse:
    metadata = bearer(token) if token else ()
    status = await running.admin.GetConfigStatus(
        admin_pb2.GetConfigStatusRequest(), metadata=metadata
    )
    assert any(r.key.endswith(key) for r in status.rejected_keys), status.rejected_keys
    return status


async def test_api_keys_switch_on_with_the_first_client_and_off_with_the_last(
    server: Running, etcd: aetcd.Client, prefix: str
) -> None:
    await server.router.ResolveModel(resolve("rag.answer"))  # no clients: open
    await put_client(etcd, prefix, "search", key_sha256=sha("search-key"))
    error = await eventually(lambda: expect_code(server, grpc.StatusCode.UNAUTHENTICATED, key=None))
    assert "x-api-key" in (error.details() or "")
    assert decode_details(error)["ErrorInfo"].reason == "API_KEY_MISSING"  # type: ignore[attr-defined]
    wrong = await expect_code(server, grpc.StatusCode.UNAUTHENTICATED, key="guessed-key")
    assert "guessed-key" not in (wrong.details() or "")
    reply = await server.router.ResolveModel(resolve("rag.answer"), metadata=key_md("search-key"))
    assert reply.model_id == "gemini-3-flash-preview"
    # Disabling the client refuses its key, with the same answer as an unknown key.
    await put_client(etcd, prefix, "search", key_sha256=sha("search-key"), enabled=False)
    await eventually(lambda: expect_code(server, grpc.StatusCode.UNAUTHENTICATED, key="search-key"))
    await etcd.delete((prefix + "clients/search").encode())
    await eventually(lambda: server.router.ResolveModel(resolve("rag.answer")))


async def test_client_limited_to_contexts_gets_permission_denied_elsewhere(
    server: Running, etcd: aetcd.Client, prefix: str
) -> None:
    await put_client(etcd, prefix, "rag-app", key_sha256=sha("rag-key"), allowed_contexts=["rag.*"])
    await put_client(
        etcd, prefix, "ranker", key_sha256=sha("rank-key"), allowed_contexts=["reranker"]
    )
    await eventually(lambda: expect_code(server, grpc.StatusCode.UNAUTHENTICATED, key=None))

    decision = await server.router.ResolveModel(resolve("rag.answer"), metadata=key_md("rag-key"))
    denied = await expect_code(
        server, grpc.StatusCode.PERMISSION_DENIED, key="rag-key", context="reranker"
    )
    assert "rag-app" in (denied.details() or "") and "reranker" in (denied.details() or "")
    await server.router.ResolveModel(resolve("reranker"), metadata=key_md("rank-key"))

    usage = router_pb2.UsageReport(
        report_id="r1",
        context="rag.answer",
        model_id="gemini-3-flash-preview",
        input_tokens=10,
        outcome=types_pb2.OUTCOME_OK,
    )
    with pytest.raises(grpc.aio.AioRpcError) as report_denied:
        await server.router.ReportUsage(
            router_pb2.ReportUsageRequest(reports=[usage]), metadata=key_md("rank-key")
        )
    assert report_denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    reply = await server.router.ReportUsage(
        router_pb2.ReportUsageRequest(reports=[usage]), metadata=key_md("rag-key")
    )
    assert reply.results[0].status == router_pb2.REPORT_STATUS_ACCEPTED

    # Feedback is checked against the context the decision was made for.
    feedback = router_pb2.SubmitFeedbackRequest(
        decision_id=decision.decision_id, thumbs=router_pb2.THUMBS_UP
    )
    with pytest.raises(grpc.aio.AioRpcError) as feedback_denied:
        await server.router.SubmitFeedback(feedback, metadata=key_md("rank-key"))
    assert feedback_denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await server.router.SubmitFeedback(feedback, metadata=key_md("rag-key"))

    # A key with no context in its request (ListModels) only needs to be valid.
    await server.router.ListModels(router_pb2.ListModelsRequest(), metadata=key_md("rank-key"))


async def test_bad_client_value_is_rejected_and_the_last_good_one_kept(
    server: Running, etcd: aetcd.Client, prefix: str
) -> None:
    await put_client(etcd, prefix, "app", key_sha256=sha("good-key"))
    await eventually(lambda: expect_code(server, grpc.StatusCode.UNAUTHENTICATED, key=None))
    for bad in (
        {"key_sha256": "abc"},
        {"key_sha256": sha("good-key"), "allowed_contexts": ["rag answer"]},
        {"key_sha256": sha("good-key"), "secret": "x"},
    ):
        await put_client(etcd, prefix, "app", **bad)
        status = await eventually(lambda: rejected_status(server, "clients/app"))
        [rejection] = [r for r in status.rejected_keys if r.key.endswith("clients/app")]
        assert rejection.previous_value_in_force
        await server.router.ResolveModel(resolve("rag.answer"), metadata=key_md("good-key"))
    # A second client reusing a key would make callers ambiguous: refused.
    await put_client(etcd, prefix, "copy", key_sha256=sha("good-key"), allowed_contexts=["x"])
    status = await eventually(lambda: rejected_status(server, "clients/copy"))
    assert "already used by clients/app" in str(status.rejected_keys)
    await server.router.ResolveModel(resolve("rag.answer"), metadata=key_md("good-key"))


# --- TLS ------------------------------------------------------------------------------


async def resolve_over(channel: grpc.aio.Channel) -> str:
    stub = router_pb2_grpc.ModelRouterServiceStub(channel)
    reply = await stub.ResolveModel(resolve("rag.answer"), timeout=5)
    return reply.model_id


async def test_tls_serves_encrypted_and_refuses_plaintext(
    seed: int, start_server: StartServer, pki: Pki
) -> None:
    running = await start_server(tls_cert=pki.server_cert, tls_key=pki.server_key)
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.read("ca"))
    async with grpc.aio.secure_channel(running.address, credentials) as channel:
        assert await resolve_over(channel) == "gemini-3-flash-preview"
    with pytest.raises(grpc.aio.AioRpcError) as plaintext:
        await resolve_over(running.channel)  # the fixture's channel is plaintext
    assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_requires_a_client_certificate_from_the_ca(
    seed: int, start_server: StartServer, pki: Pki
) -> None:
    running = await start_server(
        tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca
    )
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=pki.read("ca"),
        private_key=pki.read("client_key"),
        certificate_chain=pki.read("client_cert"),
    )
    async with grpc.aio.secure_channel(running.address, with_cert) as channel:
        assert await resolve_over(channel) == "gemini-3-flash-preview"
    without_cert = grpc.ssl_channel_credentials(root_certificates=pki.read("ca"))
    async with grpc.aio.secure_channel(running.address, without_cert) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await resolve_over(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_half_configured_tls_refuses_to_start(
    seed: int, start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    from modelroute.server.api.tls import TlsConfigError

    with pytest.raises(TlsConfigError, match="together"):
        await start_server(tls_cert=pki.server_cert)
    with pytest.raises(TlsConfigError, match="not PEM"):
        (tmp_path / "junk.pem").write_text("junk")
        await start_server(tls_cert=pki.server_cert, tls_key=tmp_path / "junk.pem")


@pytest.fixture
def tls_etcd(pki: Pki, tmp_path: Path) -> Iterator[str]:
    """A real etcd that only accepts TLS clients with a certificate from the test CA."""
    client_port, peer_port = free_port(), free_port()
    peer = f"http://127.0.0.1:{peer_port}"
    client = f"https://127.0.0.1:{client_port}"
    process = subprocess.Popen(
        [
            str(etcd_binary()),
            "--name=tls",
            f"--data-dir={tmp_path / 'etcd-tls'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=tls={peer}",
            f"--cert-file={pki.server_cert}",
            f"--key-file={pki.server_key}",
            f"--trusted-ca-file={pki.ca}",
            "--client-cert-auth",
            "--log-level=error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield f"127.0.0.1:{client_port}"
    process.terminate()
    process.wait(10)


async def test_server_reads_its_config_from_etcd_over_mutual_tls(
    tls_etcd: str, start_server: StartServer, pki: Pki, prefix: str
) -> None:
    tls = EtcdTls(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)

    async def etcd_up() -> None:
        client = connect(parse_endpoints(tls_etcd), tls=tls)
        try:
            await read_prefix(client, prefix)
        except Exception as exc:
            raise AssertionError(f"etcd not up yet: {exc}") from exc
        finally:
            await client.close()

    await eventually(etcd_up, timeout=20, interval=0.1)
    running = await start_server(
        etcd_endpoints=tls_etcd,
        etcd_ca=pki.ca,
        etcd_cert=pki.client_cert,
        etcd_key=pki.client_key,
        seed=True,  # empty prefix: seeded from the bootstrap file, through TLS
    )
    assert await resolve_over(running.channel) == "gemini-3-flash-preview"
    # Hot reload rides the same TLS connection.
    client = connect(parse_endpoints(tls_etcd), tls=tls)
    try:
        await client.put((prefix + "overrides/rag.answer").encode(), b'{"model": "gpt-4o"}')
    finally:
        await client.close()

    async def overridden() -> None:
        assert await resolve_over(running.channel) == "gpt-4o"

    await eventually(overridden, timeout=10)
    # Without a client certificate etcd refuses the connection.
    no_cert = connect(parse_endpoints(tls_etcd), tls=EtcdTls(ca=pki.ca))
    try:
        with pytest.raises(Exception):  # noqa: B017 - aetcd maps it to various types
            await asyncio.wait_for(read_prefix(no_cert, prefix), 10)
    finally:
        await no_cert.close()


async def test_python_sdk_sends_its_api_key_on_every_call(
    server: Running, etcd: aetcd.Client, prefix: str, database_url: str
) -> None:
    from modelroute.client import AsyncModelRouter, Outcome
    from sqlalchemy import create_engine, text

    await put_client(etcd, prefix, "sdk-app", key_sha256=sha("sdk-key"))
    await eventually(lambda: expect_code(server, grpc.StatusCode.UNAUTHENTICATED, key=None))
    async with AsyncModelRouter(server.address, api_key="sdk-key") as router:
        decision = await router.resolve("rag.answer", user="u1")
        assert decision.model_id == "gemini-3-flash-preview"
        router.report(
            "rag.answer",
            decision.model_id,
            outcome=Outcome.OK,
            decision_id=decision.decision_id,
            input_tokens=10,
            output_tokens=5,
            latency_ms=30,
        )
    engine = create_engine(database_url)
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT count(*) FROM llm_usage_logs")).scalar_one()
    engine.dispose()
    assert stored == 1  # the report (sent with the key) was accepted and committed
