"""ModelRouterService over HTTP (Connect protocol) on the HTTP listener: the same answers,
codes and `google.rpc` details as the gRPC port, in JSON and binary protobuf."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aetcd
import grpc
import httpx
import pytest
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.message import Message
from grpc_status import rpc_status
from modelroute.v1 import router_pb2, types_pb2

from tests.helpers import Pki, Running, eventually

SERVICE = "/modelroute.v1.ModelRouterService/"
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
async def running(seed: int, start_server: Callable[..., Awaitable[Running]]) -> Running:
    return await start_server(admin_port=0)


@pytest.fixture
async def http(running: Running) -> AsyncIterator[httpx.AsyncClient]:
    base = f"http://127.0.0.1:{running.server.admin_port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        yield client


@dataclass
class Outcome:
    """A call's result, transport-free: status code name, message, details (type → bytes)."""

    code: str
    message: str
    details: dict[str, bytes]


async def grpc_outcome(
    running: Running, method: str, request: Message, metadata: tuple[tuple[str, str], ...]
) -> Outcome:
    try:
        await getattr(running.router, method)(request, metadata=metadata)
    except grpc.aio.AioRpcError as error:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        assert status is not None, error
        details = {d.type_url.split("/")[-1]: d.value for d in status.details}
        return Outcome(error.code().name, error.details() or "", details)
    return Outcome("OK", "", {})


async def connect_outcome(
    http: httpx.AsyncClient,
    method: str,
    request: Message,
    metadata: tuple[tuple[str, str], ...],
    codec: str,
) -> Outcome:
    headers = dict(metadata) | {"Connect-Protocol-Version": "1"}
    if codec == "json":
        body = json.dumps(MessageToDict(request)).encode()
    else:
        body = request.SerializeToString()
    reply = await http.post(
        SERVICE + method,
        content=body,
        headers=headers | {"Content-Type": f"application/{codec}"},
    )
    if reply.status_code == 200:
        return Outcome("OK", "", {})
    error = reply.json()  # Connect errors are JSON whatever the codec
    details = {
        d["type"]: base64.b64decode(d["value"] + "=" * (-len(d["value"]) % 4))
        for d in error.get("details", [])
    }
    return Outcome(error["code"].upper(), error.get("message", ""), details)


def report(**fields: object) -> router_pb2.UsageReport:
    values: dict[str, object] = {
        "report_id": "r1",
        "context": "rag.answer",
        "model_id": "gemini-3-flash-preview",
        "input_tokens": 10,
        "outcome": types_pb2.OUTCOME_OK,
    } | fields
    return router_pb2.UsageReport(**values)  # type: ignore[arg-type]


def user(uid: str = "u1", tier: str = "free") -> types_pb2.User:
    return types_pb2.User(id=uid, tier=tier)


# Every RPC with the ways it can be refused for its input (no key configured yet).
BAD_REQUESTS: list[tuple[str, Message]] = [
    ("ResolveModel", router_pb2.ResolveModelRequest(context="bad context!")),
    ("ResolveModel", router_pb2.ResolveModelRequest(context="", user=user("u" * 300))),
    ("ResolveModel", router_pb2.ResolveModelRequest(context="rag.answer", user=user(tier="a b"))),
    (
        "ResolveModel",
        router_pb2.ResolveModelRequest(
            context="rag.answer", attributes={f"k{i}": "v" for i in range(40)}
        ),
    ),
    (
        "ResolveModel",  # nothing left: RESOURCE_EXHAUSTED with ErrorInfo + LocalizedMessage
        router_pb2.ResolveModelRequest(
            context="rag.answer", exclude_models=["gemini-3-flash-preview", "gpt-4o-mini"]
        ),
    ),
    ("ReportUsage", router_pb2.ReportUsageRequest()),
    ("ReportUsage", router_pb2.ReportUsageRequest(reports=[report()] * 1001)),
    ("SubmitFeedback", router_pb2.SubmitFeedbackRequest()),
    ("SubmitFeedback", router_pb2.SubmitFeedbackRequest(decision_id="nope", quality_score=2)),
    (
        "SubmitFeedback",
        router_pb2.SubmitFeedbackRequest(
            decision_id="d1.WyJ4Il0.AAAAAAAAAAAAAAAAAAAAAA", thumbs=router_pb2.THUMBS_UP
        ),
    ),
    ("GetUserPreference", router_pb2.GetUserPreferenceRequest()),
    ("GetUserPreference", router_pb2.GetUserPreferenceRequest(user_id="nobody")),
    ("SetUserPreference", router_pb2.SetUserPreferenceRequest(user=user(), model_id="")),
    (
        "SetUserPreference",
        router_pb2.SetUserPreferenceRequest(user=user(), context="rag.answer", model_id="gpt-4o"),
    ),
    (
        "SetUserPreference",
        router_pb2.SetUserPreferenceRequest(user=user(), context="reranker", model_id="gpt-4o"),
    ),
]


async def test_every_bad_request_gets_the_grpc_code_message_and_details(
    running: Running, http: httpx.AsyncClient
) -> None:
    methods_covered = set()
    for method, request in BAD_REQUESTS:
        for metadata in ((), (("accept-language", "ko"),)):
            expected = await grpc_outcome(running, method, request, metadata)
            assert expected.code != "OK", (method, request)
            assert "ErrorInfo" in str(expected.details.keys()), expected
            for codec in ("json", "proto"):
                got = await connect_outcome(http, method, request, metadata, codec)
                assert got == expected, (method, codec, metadata)
        methods_covered.add(method)
    assert methods_covered == {
        "ResolveModel",
        "ReportUsage",
        "SubmitFeedback",
        "GetUserPreference",
        "SetUserPreference",
    }


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def test_api_key_refusals_match_grpc(
    running: Running, http: httpx.AsyncClient, etcd: aetcd.Client, prefix: str
) -> None:
    value = {"key_sha256": sha("rag-key"), "allowed_contexts": ["rag.*"]}
    await etcd.put(f"{prefix}clients/rag-app".encode(), json.dumps(value).encode())
    resolve = router_pb2.ResolveModelRequest(context="rag.answer", user=user())

    async def refused() -> None:
        outcome = await grpc_outcome(running, "ResolveModel", resolve, ())
        assert outcome.code == "UNAUTHENTICATED"

    await eventually(refused)
    cases: list[tuple[str, Message, tuple[tuple[str, str], ...]]] = [
        ("ResolveModel", resolve, ()),
        ("ResolveModel", resolve, (("x-api-key", "guessed"),)),
        ("ListModels", router_pb2.ListModelsRequest(), ()),
        (
            "ResolveModel",
            router_pb2.ResolveModelRequest(context="reranker"),
            (("x-api-key", "rag-key"),),
        ),
        (
            "ReportUsage",
            router_pb2.ReportUsageRequest(reports=[report(context="reranker")]),
            (("x-api-key", "rag-key"),),
        ),
    ]
    for method, request, metadata in cases:
        expected = await grpc_outcome(running, method, request, metadata)
        assert expected.code in ("UNAUTHENTICATED", "PERMISSION_DENIED"), expected
        for codec in ("json", "proto"):
            assert await connect_outcome(http, method, request, metadata, codec) == expected
    # With the key, HTTP answers; `Authorization: Bearer` works as well as X-API-Key.
    for headers in ({"X-API-Key": "rag-key"}, {"Authorization": "Bearer rag-key"}):
        reply = await http.post(
            SERVICE + "ResolveModel",
            json={"context": "rag.answer", "user": {"id": "u1"}},
            headers=headers,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["modelId"] == "gemini-3-flash-preview"


async def test_answers_match_grpc_in_json_and_binary(
    running: Running, http: httpx.AsyncClient
) -> None:
    request = router_pb2.ResolveModelRequest(context="premium.answer", user=user("u7", "premium"))
    expected = await running.router.ResolveModel(request)
    as_json = await http.post(SERVICE + "ResolveModel", json=MessageToDict(request))
    assert as_json.status_code == 200 and as_json.headers["content-type"] == "application/json"
    binary = await http.post(
        SERVICE + "ResolveModel",
        content=request.SerializeToString(),
        headers={"Content-Type": "application/proto"},
    )
    assert binary.headers["content-type"] == "application/proto"
    decoded = router_pb2.ResolveModelResponse.FromString(binary.content)
    for reply in (ParseDict(as_json.json(), router_pb2.ResolveModelResponse()), decoded):
        assert (reply.model_id, reply.reason, list(reply.fallback_model_ids)) == (
            expected.model_id,
            expected.reason,
            list(expected.fallback_model_ids),
        )
        assert reply.decision_id.startswith("d1.") and reply.decision_id != expected.decision_id
    # The decision id from HTTP is accepted by ReportUsage over gRPC: one token space.
    stored = await running.router.ReportUsage(
        router_pb2.ReportUsageRequest(
            reports=[
                report(
                    report_id="http-1",
                    context="premium.answer",
                    model_id=decoded.model_id,
                    decision_id=decoded.decision_id,
                )
            ]
        )
    )
    assert stored.results[0].status == router_pb2.REPORT_STATUS_ACCEPTED
    # Reads without side effects work as GET too (cacheable).
    listed = await http.get(
        SERVICE + "ListModels",
        params={"encoding": "json", "message": json.dumps({"tier": "free"}), "connect": "v1"},
    )
    assert listed.status_code == 200, listed.text
    grpc_models = await running.router.ListModels(router_pb2.ListModelsRequest(tier="free"))
    assert [m["modelId"] for m in listed.json()["models"]] == [
        m.model_id for m in grpc_models.models
    ]


def envelope(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


async def test_watch_config_streams_revisions(
    running: Running, http: httpx.AsyncClient, etcd: aetcd.Client, prefix: str
) -> None:
    async with http.stream(
        "POST",
        SERVICE + "WatchConfig",
        content=envelope(b"{}"),
        headers={"Content-Type": "application/connect+json"},
    ) as reply:
        assert reply.status_code == 200
        chunks = reply.aiter_bytes()
        buffer = b""

        async def next_message() -> dict[str, object]:
            nonlocal buffer
            while len(buffer) < 5 or len(buffer) < 5 + struct.unpack(">I", buffer[1:5])[0]:
                buffer += await chunks.__anext__()
            size = struct.unpack(">I", buffer[1:5])[0]
            flags, payload, buffer = buffer[0], buffer[5 : 5 + size], buffer[5 + size :]
            assert flags == 0, payload
            return json.loads(payload)  # type: ignore[no-any-return]

        first = await next_message()
        revision = int(str(first["configRevision"]))
        await etcd.put(f"{prefix}overrides/rag.answer".encode(), b'{"model": "gpt-4o"}')
        second = await next_message()
        assert int(str(second["configRevision"])) > revision


def json_values(text: str) -> list[dict[str, Any]]:
    """The JSON documents printed one after another (pretty-printed or not)."""
    decoder, values, position = json.JSONDecoder(), [], 0
    while (start := text.find("{", position)) != -1:
        value, position = decoder.raw_decode(text, start)
        values.append(value)
    return values


def readme_block(marker: str) -> str:
    """The shell block after `<!-- test: marker -->` in the README."""
    text = README.read_text()
    match = re.search(rf"<!-- test: {marker} -->\s*```(?:sh|bash)\n(.*?)```", text, re.S)
    assert match, f"README has no block marked {marker}"
    return match.group(1)


async def test_readme_curl_example_runs(running: Running) -> None:
    import asyncio

    script = readme_block("connect-curl")
    env = {
        "MODELROUTE_HTTP": f"http://127.0.0.1:{running.server.admin_port}",
        "PATH": "/usr/bin:/bin",
    }
    done = await asyncio.to_thread(
        subprocess.run, ["sh", "-euc", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    replies = json_values(done.stdout)
    assert replies[0]["modelId"] == "gemini-3-flash-preview"
    assert replies[0]["reason"] == "REASON_CONTEXT_DEFAULT"
    assert any(r.get("results", [{}])[0].get("status") == "REPORT_STATUS_ACCEPTED" for r in replies)
    assert any(r.get("code") == "invalid_argument" for r in replies)


async def test_http2_cleartext_prior_knowledge(running: Running) -> None:
    """h2c (what connect-node's `httpVersion: "2"` and gRPC-style clients use without TLS)."""
    base = f"http://127.0.0.1:{running.server.admin_port}"
    async with httpx.AsyncClient(base_url=base, http1=False, http2=True) as h2:
        for codec, body in (
            ("json", b'{"context": "rag.answer"}'),
            ("proto", router_pb2.ResolveModelRequest(context="rag.answer").SerializeToString()),
        ):
            reply = await h2.post(
                SERVICE + "ResolveModel",
                content=body,
                headers={"Content-Type": f"application/{codec}"},
            )
            assert reply.http_version == "HTTP/2", reply.http_version
            assert reply.status_code == 200, reply.text
        refused = await h2.post(SERVICE + "ResolveModel", json={"context": "bad context!"})
        assert (refused.http_version, refused.status_code) == ("HTTP/2", 400)
        assert refused.json()["code"] == "invalid_argument"


async def test_http2_over_tls_and_mutual_tls(
    seed: int,
    start_server: Callable[..., Awaitable[Running]],
    pki: Pki,
) -> None:
    """With TLS the listener offers h2 by ALPN; with a client CA it refuses clients without a
    certificate, like the gRPC port."""
    import ssl

    running = await start_server(
        admin_port=0, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca
    )
    base = f"https://127.0.0.1:{running.server.admin_port}"
    with_cert = ssl.create_default_context(cafile=str(pki.ca))
    with_cert.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    async with httpx.AsyncClient(base_url=base, http2=True, verify=with_cert) as h2:
        reply = await h2.post(SERVICE + "ResolveModel", json={"context": "rag.answer"})
        assert (reply.http_version, reply.status_code) == ("HTTP/2", 200), reply.text
        assert reply.json()["modelId"] == "gemini-3-flash-preview"
    without_cert = ssl.create_default_context(cafile=str(pki.ca))
    async with httpx.AsyncClient(base_url=base, http2=True, verify=without_cert) as anonymous:
        with pytest.raises(httpx.TransportError):  # TLS 1.3: refused at the first read or write
            await anonymous.post(SERVICE + "ResolveModel", json={"context": "rag.answer"})


async def test_browsers_on_listed_origins_may_call_the_application_api_only(
    seed: int, start_server: Callable[..., Awaitable[Running]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELROUTE_HTTP_CORS_ORIGINS", "https://app.example.com")
    running = await start_server(admin_port=0)
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,connect-protocol-version,x-api-key",
    }
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{running.server.admin_port}") as http:
        for path in (SERVICE + "ResolveModel", "/ofrep/v1/evaluate/flags/rag.answer"):
            allowed = await http.options(
                path, headers=preflight | {"Origin": "https://app.example.com"}
            )
            assert allowed.status_code == 200, (path, allowed.text)
            assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
            assert "x-api-key" in allowed.headers["access-control-allow-headers"]
            other = await http.options(path, headers=preflight | {"Origin": "https://evil.test"})
            assert "access-control-allow-origin" not in other.headers
        reply = await http.post(
            SERVICE + "ResolveModel",
            json={"context": "rag.answer"},
            headers={"Origin": "https://app.example.com"},
        )
        assert reply.status_code == 200
        assert reply.headers["access-control-allow-origin"] == "https://app.example.com"
        # The admin API (bearer tokens) never answers cross-origin requests.
        admin = await http.options(
            "/api/admin/models", headers=preflight | {"Origin": "https://app.example.com"}
        )
        assert "access-control-allow-origin" not in admin.headers


async def test_listener_sends_responses_without_waiting_for_acks(running: Running) -> None:
    """Nagle off on every connection: with it on, a response written as headers then body
    waits for the client's delayed ACK (~40 ms per request). asyncio disables Nagle only
    on sockets whose protocol says TCP; accepted sockets inherit the listener's options."""
    import socket

    listener = running.server.admin_http
    assert listener is not None and listener.socket is not None
    assert listener.socket.proto == socket.IPPROTO_TCP
    assert listener.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
