"""Config history, audit and rollback against a real etcd and database (in-process
replicas): who changed what, once per change, and one-step rollback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import aetcd
import grpc
import pytest
from modelroute.admin.v1 import admin_pb2
from modelroute.server.runtime.change_meta import ACTOR_ROLLOUT_CONTROLLER, with_change_meta
from modelroute.storage.etcd import read_prefix, write_changes
from modelroute.storage.history_store import ChangeRecord, HistoryStore
from modelroute.storage.runtime_store import EtcdRuntimeStore
from modelroute.v1 import router_pb2, types_pb2

from tests.helpers import Running, eventually

ALICE = [("authorization", "Bearer alice-secret")]
BARE = [("authorization", "Bearer plain-secret")]
TOKENS = ["alice:alice-secret", "plain-secret"]


def override(model: str) -> str:
    return json.dumps({"model": model, "note": "test"})


async def history(server: Running, prefix: str = "", metadata=ALICE) -> list:
    reply = await server.admin.ListConfigChanges(
        admin_pb2.ListConfigChangesRequest(key_prefix=prefix), metadata=metadata
    )
    return list(reply.changes)


async def resolved(server: Running, context: str = "rag.answer") -> str:
    reply = await server.router.ResolveModel(
        router_pb2.ResolveModelRequest(context=context, user=types_pb2.User(id="u1"))
    )
    return reply.model_id


@pytest.fixture
async def two(
    seed: int, start_server: Callable[..., Awaitable[Running]]
) -> tuple[Running, Running]:
    first = await start_server(admin_tokens=TOKENS)
    second = await start_server(admin_tokens=TOKENS)
    return first, second


async def test_apply_and_etcd_writes_recorded_once_with_actor_and_note(
    two: tuple[Running, Running], etcd: aetcd.Client, prefix: str
) -> None:
    first, second = two
    applied = await first.admin.ApplyConfig(
        admin_pb2.ApplyConfigRequest(
            changes=[
                admin_pb2.KeyChange(key="overrides/rag.answer", value_json=override("gpt-4o"))
            ],
            note="incident 42",
        ),
        metadata=ALICE,
    )
    by_etcd = await write_changes(
        etcd, prefix, {"overrides/rag.answer": override("gpt-4o-mini").encode()}, 0, []
    )
    await write_changes(
        etcd, prefix, {"overrides/rag.answer": None}, 0, []
    )  # a deletion is recorded too

    async def three_recorded() -> list:
        changes = await history(second, "overrides/")
        assert len(changes) == 3
        return changes

    deleted, etcd_change, alice_change = await eventually(three_recorded)
    assert (alice_change.revision, alice_change.actor, alice_change.note) == (
        applied.revision,
        "alice",
        "incident 42",
    )
    assert not alice_change.HasField("value_before_json")
    assert json.loads(alice_change.value_after_json)["model"] == "gpt-4o"
    assert (etcd_change.revision, etcd_change.actor) == (by_etcd, "etcd")
    assert json.loads(etcd_change.value_before_json)["model"] == "gpt-4o"
    assert deleted.actor == "etcd" and not deleted.HasField("value_after_json")
    # Both replicas saw every change; each is stored once.
    await first.server.history_recorder.wait_idle()
    await second.server.history_recorder.wait_idle()
    assert len(await history(first, "overrides/")) == 3


async def test_bare_token_is_operator_and_rollout_controller_helper(
    two: tuple[Running, Running], etcd: aetcd.Client, prefix: str
) -> None:
    first, _ = two
    await first.admin.ApplyConfig(
        admin_pb2.ApplyConfigRequest(
            changes=[admin_pb2.KeyChange(key="overrides/reranker", value_json=override("gpt-4o"))]
        ),
        metadata=BARE,
    )
    revision, _ = await read_prefix(etcd, prefix)
    await write_changes(
        etcd,
        prefix,
        with_change_meta(
            {"overrides/reranker": override("gpt-4o-mini").encode()},
            ACTOR_ROLLOUT_CONTROLLER,
            "step 2",
        ),
        revision,
        ["overrides/"],
    )

    async def two_recorded() -> list:
        changes = await history(first, "overrides/reranker")
        assert len(changes) == 2
        return changes

    controller, operator = await eventually(two_recorded)
    assert operator.actor == "operator"
    assert (controller.actor, controller.note) == ("rollout-controller", "step 2")


async def test_clients_secrets_are_redacted(
    two: tuple[Running, Running], etcd: aetcd.Client, prefix: str
) -> None:
    first, _ = two
    digest = "ab" * 32
    await write_changes(
        etcd, prefix, {"clients/app": json.dumps({"key_sha256": digest}).encode()}, 0, []
    )
    changes = await eventually(lambda: _one(history(first, "clients/")))
    assert digest not in changes.value_after_json
    assert "redacted" in changes.value_after_json


async def _one(pending: Awaitable[list]) -> object:
    changes = await pending
    assert len(changes) == 1
    return changes[0]


async def test_rollback_restores_answers_on_both_replicas_and_is_recorded(
    two: tuple[Running, Running], etcd: aetcd.Client, prefix: str
) -> None:
    first, second = two
    before = await resolved(first)
    good, _ = await read_prefix(etcd, prefix)
    await eventually(lambda: _at_least(first, good))
    await write_changes(
        etcd,
        prefix,
        {
            "overrides/rag.answer": override("gpt-4o").encode(),
            "contexts/brand.new": json.dumps({"model": "gpt-4o"}).encode(),
        },
        0,
        [],
    )
    await eventually(lambda: _answers(first, second, "gpt-4o"))
    dry = await first.admin.RollbackConfig(
        admin_pb2.RollbackConfigRequest(revision=good, dry_run=True), metadata=ALICE
    )
    assert dry.revision == 0 and dry.changed_keys == 2
    assert any("overrides/rag.answer (deleted)" in line for line in dry.diff)
    await eventually(lambda: _answers(first, second, "gpt-4o"))  # the dry run wrote nothing
    done = await first.admin.RollbackConfig(
        admin_pb2.RollbackConfigRequest(revision=good, note="bad override"), metadata=ALICE
    )
    assert done.revision > good
    await eventually(lambda: _answers(first, second, before))
    _, stored = await read_prefix(etcd, prefix)
    assert "contexts/brand.new" not in stored and "overrides/rag.answer" not in stored

    async def rollback_recorded() -> list:
        rows = [c for c in await history(second) if c.revision == done.revision]
        assert len(rows) == 2
        return rows

    rows = await eventually(rollback_recorded)
    assert {r.actor for r in rows} == {"alice"}
    assert all(r.note == f"rollback to revision {good}: bad override" for r in rows)


async def _at_least(server: Running, revision: int) -> None:
    reply = await server.admin.GetConfigAt(
        admin_pb2.GetConfigAtRequest(revision=revision), metadata=ALICE
    )
    assert reply.values_json


async def _answers(first: Running, second: Running, model: str) -> None:
    assert await resolved(first) == model
    assert await resolved(second) == model


async def test_get_config_at_and_retention_not_found(
    two: tuple[Running, Running], etcd: aetcd.Client, prefix: str
) -> None:
    first, _ = two
    seeded, _ = await read_prefix(etcd, prefix)
    changed = await write_changes(
        etcd, prefix, {"overrides/rag.answer": override("gpt-4o").encode()}, 0, []
    )
    await eventually(lambda: _one(history(first, "overrides/")))
    old = await first.admin.GetConfigAt(
        admin_pb2.GetConfigAtRequest(revision=seeded), metadata=ALICE
    )
    new = await first.admin.GetConfigAt(
        admin_pb2.GetConfigAtRequest(revision=changed), metadata=ALICE
    )
    assert "overrides/rag.answer" not in old.values_json
    assert json.loads(new.values_json["overrides/rag.answer"])["model"] == "gpt-4o"
    assert set(new.values_json) - set(old.values_json) == {"overrides/rag.answer"}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await first.admin.GetConfigAt(
            admin_pb2.GetConfigAtRequest(revision=new.oldest_revision - 1), metadata=ALICE
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert f"the oldest kept is {new.oldest_revision}" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await first.admin.GetConfigAt(
            admin_pb2.GetConfigAtRequest(revision=changed + 10_000), metadata=ALICE
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "does not exist yet" in (info.value.details() or "")


def test_retention_prunes_superseded_rows_and_moves_the_oldest_revision(
    database_url: str,
) -> None:
    from modelroute.storage.database import create_engine_for, upgrade

    upgrade(database_url)
    store = HistoryStore(create_engine_for(database_url))
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=100), now - timedelta(days=1)
    store.record(
        [
            ChangeRecord(10, old, "", None, None, "modelroute", "recording started"),
            ChangeRecord(5, old, "contexts/a", None, '{"model": "m1"}', "etcd", ""),
            ChangeRecord(11, old, "contexts/a", '{"model": "m1"}', '{"model": "m2"}', "x", ""),
            ChangeRecord(12, old, "contexts/b", None, '{"model": "m1"}', "x", ""),
            ChangeRecord(20, recent, "contexts/a", '{"model": "m2"}', '{"model": "m3"}', "x", ""),
        ]
    )
    # The same change seen by another replica is not stored twice.
    assert store.record([ChangeRecord(20, now, "contexts/a", None, "{}", "y", "")]) == 0
    cutoff = now - timedelta(days=90)
    assert store.oldest_revision(cutoff) == 12
    assert store.prune(cutoff) == 1  # contexts/a@5: superseded by @11 before the window
    assert store.oldest_revision(cutoff) == 12
    # The state at the oldest kept revision is still complete.
    assert store.state_at(12) == {"contexts/a": '{"model": "m2"}', "contexts/b": '{"model": "m1"}'}
    assert store.state_at(25)["contexts/a"] == '{"model": "m3"}'


def test_token_names_from_name_colon_token_lines(tmp_path) -> None:
    from modelroute.server.api.auth import AdminTokens

    token_file = tmp_path / "tokens"
    token_file.write_text("# operators\nbob:bob-token\nbare-token\n")
    tokens = AdminTokens(["alice:alice-token"], token_file=token_file)
    assert tokens.name_of("alice-token") == "alice"
    assert tokens.name_of("bob-token") == "bob"
    assert tokens.name_of("bare-token") == "operator"
    assert tokens.name_of("alice:alice-token") is None  # the name is not part of the secret
    assert tokens.name_of("nope") is None and not tokens.verify("nope")
    assert AdminTokens().name_of(None) == "operator"  # admin left open


async def test_rollback_bad_input(
    two: tuple[Running, Running], etcd: aetcd.Client, prefix: str
) -> None:
    first, _ = two
    head, _ = await read_prefix(etcd, prefix)
    cases = [
        (admin_pb2.RollbackConfigRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (admin_pb2.RollbackConfigRequest(revision=1), grpc.StatusCode.NOT_FOUND),
        (admin_pb2.RollbackConfigRequest(revision=head + 1000), grpc.StatusCode.NOT_FOUND),
        (
            admin_pb2.RollbackConfigRequest(revision=head, note="x" * 3000),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for request, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await first.admin.RollbackConfig(request, metadata=ALICE)
        assert info.value.code() == code, request
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await first.admin.ListConfigChanges(admin_pb2.ListConfigChangesRequest(), metadata=[])
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_http_history_and_guarded_apply_record_the_token_name(
    seed: int, start_server: Callable[..., Awaitable[Running]], etcd: aetcd.Client, prefix: str
) -> None:
    import httpx

    server = await start_server(admin_port=0, admin_tokens=TOKENS)
    base = f"http://127.0.0.1:{server.server.admin_port}/api/admin"
    headers = {"Authorization": "Bearer alice-secret"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as http:
        assert (await http.get("/config/history", headers={"Authorization": ""})).status_code == 401
        loaded = (await http.get("/config/current")).json()["revision"]
        body = {
            "changes": [{"key": "overrides/reranker", "value": {"model": "gpt-4o"}}],
            "expected_revision": loaded,
            "note": "from the API",
        }
        applied = await http.post("/config/apply", json=body)
        assert applied.status_code == 200, applied.text
        other = [{"key": "overrides/reranker", "value": {"model": "gpt-4o-mini"}}]
        stale = await http.post("/config/apply", json=body | {"changes": other})
        assert stale.status_code == 409
        assert "changed since you loaded it" in stale.json()["error"]["message"]

        async def listed() -> dict:
            reply = await http.get("/config/history", params={"key_prefix": "overrides/"})
            changes = reply.json()["changes"]
            assert len(changes) == 1
            return changes[0]

        change = await eventually(listed)
    assert (change["actor"], change["note"]) == ("alice", "from the API")
    assert json.loads(change["value_after_json"])["model"] == "gpt-4o"


async def test_http_support_desk_preference_and_cooldown_clear(
    seed: int, start_server: Callable[..., Awaitable[Running]], etcd: aetcd.Client, prefix: str
) -> None:
    import httpx
    from modelroute.server.runtime.runtime_state import start_cooldown

    server = await start_server(admin_port=0, admin_tokens=TOKENS)
    base = f"http://127.0.0.1:{server.server.admin_port}/api/admin"
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": "Bearer alice-secret"}, timeout=10
    ) as http:
        # Within the tier rules only: gpt-4o is for premium users.
        refused = await http.put(
            "/users/u7/preferences", json={"model_id": "gpt-4o", "tier": "free"}
        )
        assert refused.status_code == 409 and "allowed" in refused.json()["error"]["message"]
        accepted = await http.put(
            "/users/u7/preferences",
            json={"model_id": "gpt-4o", "tier": "premium", "context": "rag.answer"},
        )
        assert accepted.status_code == 200, accepted.text
        looked_up = (await http.get("/users/u7/preferences")).json()["preferences"]
        assert looked_up == [
            {
                "context": "rag.answer",
                "model_id": "gpt-4o",
                "updated_at": looked_up[0]["updated_at"],
            }
        ]

        async def served() -> None:
            reply = await server.router.ResolveModel(
                router_pb2.ResolveModelRequest(
                    context="rag.answer", user=types_pb2.User(id="u7", tier="premium")
                )
            )
            assert reply.model_id == "gpt-4o"

        await eventually(served)

        await start_cooldown(
            EtcdRuntimeStore(etcd, prefix), "models/gpt-4o-mini", timedelta(minutes=5), "test"
        )
        cleared = await http.post("/cooldowns/clear", json={"subject": "gpt-4o-mini"})
        assert cleared.status_code == 200 and cleared.json() == {"cleared": "models/gpt-4o-mini"}
        again = await http.post("/cooldowns/clear", json={"subject": "gpt-4o-mini"})
        assert again.status_code == 404


async def test_changes_made_while_no_replica_watched_are_recorded_at_start(
    seed: int, start_server: Callable[..., Awaitable[Running]], etcd: aetcd.Client, prefix: str
) -> None:
    first = await start_server(admin_tokens=TOKENS)
    await first.server.history_recorder.wait_idle()
    await first.close()  # no replica watches now
    changed = await write_changes(
        etcd, prefix, {"overrides/reranker": override("gpt-4o").encode()}, 0, []
    )
    deleted = await write_changes(etcd, prefix, {"contexts/rule_miner": None}, 0, [])
    await etcd.compact(deleted)  # etcd forgets the events themselves
    second = await start_server(admin_tokens=TOKENS)

    async def recorded() -> list:
        rows = [c for c in await history(second) if c.revision >= changed]
        assert len(rows) == 2
        return rows

    rows = await eventually(recorded)
    by_key = {r.key: r for r in rows}
    assert by_key["overrides/reranker"].revision == changed
    assert by_key["overrides/reranker"].actor == "etcd"
    assert "no replica was watching" in by_key["overrides/reranker"].note
    assert not by_key["contexts/rule_miner"].HasField("value_after_json")
    assert json.loads(by_key["contexts/rule_miner"].value_before_json)["model"]


async def test_a_late_resync_does_not_undo_newer_history(database_url: str) -> None:
    """A replica's start-up read (a full state at revision R) can be processed after another
    replica recorded a newer change (a key created at R+1): the resync must not take the
    key's absence at R for a deletion (a CI run recorded a phantom deletion this way)."""
    from modelroute.server.runtime.history_recorder import HistoryRecorder
    from modelroute.storage.database import create_engine_for, upgrade
    from modelroute.storage.updates import ConfigUpdate

    upgrade(database_url)
    store = HistoryStore(create_engine_for(database_url))
    now = datetime.now(UTC)
    store.record(
        [
            ChangeRecord(10, now, "", None, None, "modelroute", "recording started"),
            ChangeRecord(10, now, "contexts/a", None, '{"model": "m1"}', "etcd", ""),
            ChangeRecord(12, now, "overrides/a", None, '{"model": "m2"}', "alice", "pin"),
        ]
    )
    recorder = HistoryRecorder(store)
    task = asyncio.create_task(recorder.run())
    try:
        recorder.on_update(
            ConfigUpdate(
                revision=11,
                changes={"contexts/a": b'{"model": "m1"}'},
                full_state=True,
                key_revisions={"contexts/a": 10},
            )
        )
        await recorder.wait_idle()
    finally:
        task.cancel()
    rows = store.changes()
    # Nothing added: no phantom deletion of overrides/a at revision 11.
    assert [(r.revision, r.key, r.value_after) for r in rows] == [
        (12, "overrides/a", '{"model": "m2"}'),
        (10, "contexts/a", '{"model": "m1"}'),
    ]
