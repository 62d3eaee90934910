"""The native OpenFeature provider of the Python SDK (`modelroute.client.openfeature`)
against a live replica: answers equal ResolveModel, a new config revision emits
PROVIDER_CONFIGURATION_CHANGED, `track()` is a usage report. Also runs the README example."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aetcd
import pytest
from modelroute.client.openfeature import ModelrouteProvider
from modelroute.v1 import router_pb2, types_pb2
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from openfeature.track import TrackingEventDetails

from tests.helpers import (
    UNLIMITED,
    USER_EXPERIMENT,
    Running,
    eventually,
    put,
    put_applied,
    usage_rows,
)

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def provider(server: Running) -> Iterator[ModelrouteProvider]:
    # A long deadline: under load the fail-safe would answer from the last-known cache.
    made = ModelrouteProvider(server.address, resolve_timeout=30.0)
    yield made
    api.clear_providers()  # shuts the provider down (and closes the router it made)


async def evaluate(
    domain: str, flag: str, context: EvaluationContext | None, default: str = "caller-default"
):  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(
        api.get_client(domain).get_string_details, flag, default, context
    )


async def test_answers_equal_resolve_model(
    server: Running, provider: ModelrouteProvider, etcd: aetcd.Client, prefix: str
) -> None:
    for name in ("google", "openai"):
        await put(etcd, prefix, f"providers/{name}", UNLIMITED)
    await put_applied(server, etcd, prefix, "experiments/rag-q4", USER_EXPERIMENT)
    await asyncio.to_thread(api.set_provider_and_wait, provider, "native")
    for index in range(200):
        user_id = f"user-{index}"
        details = await evaluate(
            "native", "rag.answer", EvaluationContext(user_id, {"tier": "free"})
        )
        expected = await server.router.ResolveModel(
            router_pb2.ResolveModelRequest(
                context="rag.answer", user=types_pb2.User(id=user_id, tier="free")
            )
        )
        assert details.error_code is None, (details.error_code, details.error_message)
        assert details.flag_metadata["source"] == "server"
        assert (details.value, details.variant) == (expected.model_id, expected.variant_id)
        assert details.reason == Reason.SPLIT
        assert details.flag_metadata["experimentId"] == "rag-q4"
    # Async evaluation (the SDK's *_async path) gives the same answer.
    client = api.get_client("native")
    same = await client.get_string_details_async("rag.answer", "x", EvaluationContext("user-1"))
    sync = await evaluate("native", "rag.answer", EvaluationContext("user-1"))
    assert (same.value, same.variant) == (sync.value, sync.variant)
    # Errors: the caller's default with the OpenFeature error code.
    bad = await evaluate("native", "rag.answer", EvaluationContext("u", {"tier": "a b"}))
    assert (bad.value, bad.error_code) == ("caller-default", ErrorCode.INVALID_CONTEXT)
    wrong_type = await asyncio.to_thread(client.get_boolean_details, "rag.answer", False)
    assert wrong_type.error_code == ErrorCode.TYPE_MISMATCH


async def test_new_revision_emits_configuration_changed(
    server: Running, provider: ModelrouteProvider, etcd: aetcd.Client, prefix: str
) -> None:
    changes: list[EventDetails] = []
    await asyncio.to_thread(api.set_provider_and_wait, provider, "events")
    api.get_client("events").add_handler(
        ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, changes.append
    )

    def watching() -> None:
        assert provider.config_revision > 0

    await eventually(watching)
    before = await evaluate("events", "reranker", EvaluationContext("u1"))
    assert before.value == "gpt-4o-mini"
    written = await etcd.put(
        f"{prefix}overrides/reranker".encode(), json.dumps({"model": "gpt-4o"}).encode()
    )

    def announced() -> None:
        assert changes, "no PROVIDER_CONFIGURATION_CHANGED yet"
        assert int(str(changes[-1].metadata["configRevision"])) >= written.header.revision

    await eventually(announced)
    after = await evaluate("events", "reranker", EvaluationContext("u1"))
    assert (after.value, after.variant) == ("gpt-4o", "OPERATOR_OVERRIDE")


async def test_track_is_a_usage_report(
    server: Running, provider: ModelrouteProvider, etcd: aetcd.Client, prefix: str
) -> None:
    await put_applied(server, etcd, prefix, "experiments/rag-q4", USER_EXPERIMENT)
    await asyncio.to_thread(api.set_provider_and_wait, provider, "track")
    client = api.get_client("track")
    user = EvaluationContext("user-9", {"tier": "free"})
    details = await evaluate("track", "rag.answer", user)
    event = TrackingEventDetails(
        value=640.0,
        attributes={
            "model_id": details.value,
            "decision_id": str(details.flag_metadata["decisionId"]),
            "input_tokens": 812,
            "output_tokens": 95,
            "outcome": "OK",
        },
    )
    await asyncio.to_thread(client.track, "rag.answer", user, event)
    await asyncio.to_thread(provider.router.flush)
    [row] = usage_rows(server)
    assert (row["context"], row["model_id"], row["input_tokens"], row["output_tokens"]) == (
        "rag.answer",
        details.value,
        812,
        95,
    )
    assert (row["latency_ms"], row["user_id"], row["tier"], row["outcome"]) == (
        640,
        "user-9",
        "free",
        "OK",
    )
    assert (row["experiment_id"], row["variant_id"]) == ("rag-q4", details.variant)


def readme_python(marker: str) -> str:
    match = re.search(rf"<!-- test: {marker} -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert match, f"README has no python block marked {marker}"
    return match.group(1)


@pytest.mark.parametrize("marker", ["ofrep-python", "openfeature-native"])
async def test_readme_examples_run(
    marker: str,
    seed: int,
    start_server,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    running: Running = await start_server(admin_port=0)
    script = tmp_path / "example.py"
    script.write_text(readme_python(marker))
    env = {
        "MODELROUTE_HTTP": f"http://127.0.0.1:{running.server.admin_port}",
        "MODELROUTE_ADDRESS": running.address,
        "PATH": "/usr/bin:/bin",
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    printed = done.stdout.split()
    assert printed[0] == "gemini-3-flash-preview", done.stdout
    assert printed[1:3] == ["STATIC", "CONTEXT_DEFAULT"], done.stdout
    if marker == "openfeature-native":

        def reported() -> None:
            assert len(usage_rows(running)) == 1

        await eventually(reported)
        [row] = usage_rows(running)
        assert (row["model_id"], row["latency_ms"], row["input_tokens"]) == (
            "gemini-3-flash-preview",
            640,
            812,
        )
