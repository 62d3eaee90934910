"""PreviewConfigChange (`config apply --impact`) against a real etcd and a seeded usage
table: its figures equal a brute-force, row-by-row replay through the resolver."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import aetcd
import grpc
import pytest
from modelroute.admin.v1 import admin_pb2
from modelroute.server.core.resolver import NoModelAvailableError, ResolveInput, resolve
from modelroute.server.core.snapshot import Snapshot, SnapshotBuilder
from modelroute.storage.database import create_engine_for
from modelroute.storage.etcd import read_prefix, write_changes
from modelroute.storage.preference_store import PreferenceStore, StoredPreference
from modelroute.storage.tables import LlmUsageLog
from sqlalchemy import insert, select

from tests.helpers import Running

CONTEXTS = ["rag.answer", "premium.answer", "reranker", "template_gates", "unknown.ctx"]
EXPERIMENT = {
    "context": "rag.answer",
    "variants": [
        {"id": "flash", "model": "gemini-3-flash-preview", "weight": 50},
        {"id": "mini", "model": "gpt-4o-mini", "weight": 50},
    ],
    "enabled": True,
    "bucket_by": "USER",
}
PROPOSED = {
    "experiments/exp1": {**EXPERIMENT, "variants": [
        {"id": "flash", "model": "gemini-3-flash-preview", "weight": 80},
        {"id": "mini", "model": "gpt-4o-mini", "weight": 20},
    ]},
    "contexts/reranker": {"model": "gpt-4o", "fallbacks": ["gemini-3-flash-preview"]},
    "models/claude-3-sonnet": {"provider": "anthropic", "tiers": ["premium"], "enabled": False,
                               "input_usd_per_mtok": 3, "output_usd_per_mtok": 15},
    "models/gpt-4o-mini": {"provider": "openai", "tiers": ["free", "premium"],
                           "input_usd_per_mtok": 0.3, "output_usd_per_mtok": 1.2},
}  # fmt: skip


@pytest.fixture
async def seeded(
    seed: int,
    etcd: aetcd.Client,
    prefix: str,
    database_url: str,
    start_server: Callable[..., Awaitable[Running]],
) -> Running:
    await write_changes(etcd, prefix, {"experiments/exp1": json.dumps(EXPERIMENT).encode()}, 0, [])
    server = await start_server()
    engine = create_engine_for(database_url)
    rng = random.Random(12)
    now = datetime.now(UTC)
    rows: list[dict[str, object]] = []
    for index in range(3000):
        user = "" if index % 17 == 0 else f"user-{rng.randrange(400)}"
        rows.append(
            {
                "report_id": f"r{index}",
                "context": rng.choice(CONTEXTS),
                "model_id": "recorded-model",
                "provider": "p",
                "outcome": "OUTCOME_SUCCESS",
                "user_id": user or None,
                "tier": rng.choice(["free", "premium", None]),
                "input_tokens": rng.randrange(10, 5000),
                "output_tokens": rng.randrange(1, 2000),
                "latency_ms": 100,
                "estimated_cost": 0.0,
                "config_revision": 1,
                # 10% outside the 24 h window: they must not be replayed.
                "created_at": now - timedelta(hours=rng.uniform(0, 23.5) if index % 10 else 30),
            }
        )
    with engine.begin() as connection:
        connection.execute(insert(LlmUsageLog.__table__), rows)  # type: ignore[attr-defined]
    preferences = PreferenceStore(engine)
    for number in range(0, 400, 7):
        preferences.set(StoredPreference(f"user-{number}", "", "gpt-4o", now))
    engine.dispose()
    return server


def _outcome(snapshot: Snapshot, request: ResolveInput, now: datetime) -> tuple[str, str, tuple]:
    try:
        d = resolve(snapshot, request, now)
    except NoModelAvailableError:
        return "(none)", "", ()
    variant = f"{d.experiment_id}/{d.variant_id}" if d.experiment_id else ""
    return d.model_id, variant, (d.model_id, *d.fallback_model_ids)


def _cost(snapshot: Snapshot, model: str, tokens_in: int, tokens_out: int) -> float:
    spec = snapshot.models.get(model)
    return spec.cost_usd(tokens_in, tokens_out) if spec else 0.0


async def test_preview_equals_brute_force_replay(
    seeded: Running, etcd: aetcd.Client, prefix: str, database_url: str
) -> None:
    changes = [admin_pb2.KeyChange(key=k, value_json=json.dumps(v)) for k, v in PROPOSED.items()]
    reply = await seeded.admin.PreviewConfigChange(
        admin_pb2.PreviewConfigChangeRequest(changes=changes, window_seconds=86400)
    )
    # Nothing was written.
    revision, stored = await read_prefix(etcd, prefix)
    assert json.loads(stored["contexts/reranker"].value)["model"] == "gpt-4o-mini"

    # Brute force: every row in the window, one by one.
    now = reply.window_end.ToDatetime(UTC)
    start = reply.window_start.ToDatetime(UTC)
    current = {k: v.value for k, v in stored.items() if not k.startswith("runtime/")}
    before, _ = SnapshotBuilder().apply(revision, current, now, full_state=True)
    proposed = {**current, **{k: json.dumps(v).encode() for k, v in PROPOSED.items()}}
    after, _ = SnapshotBuilder().apply(revision + 1, proposed, now, full_state=True)
    engine = create_engine_for(database_url)
    table = LlmUsageLog.__table__  # type: ignore[attr-defined]
    with engine.connect() as connection:
        rows = connection.execute(
            select(table).where(table.c.created_at >= start, table.c.created_at < now)
        ).all()
    preferences = PreferenceStore(engine)
    expected: dict[str, dict] = defaultdict(
        lambda: {"calls": 0, "changed": 0, "no_user": 0, "before": 0.0, "after": 0.0,
                 "moves": Counter(), "variants": defaultdict(set), "rb": set(), "ra": set()}
    )  # fmt: skip
    for row in rows:
        user = row.user_id or ""
        stored_prefs = preferences.for_user(user) if user else {}
        chosen = stored_prefs.get(row.context) or stored_prefs.get("")
        request = ResolveInput(
            context=row.context,
            user_id=user,
            tier=row.tier or "",
            preferred_model=chosen.model_id if chosen else None,
        )
        old, new = _outcome(before, request, now), _outcome(after, request, now)
        e = expected[row.context]
        e["calls"] += 1
        e["no_user"] += 0 if user else 1
        e["before"] += _cost(before, old[0], row.input_tokens, row.output_tokens)
        e["after"] += _cost(after, new[0], row.input_tokens, row.output_tokens)
        e["rb"].update(old[2])
        e["ra"].update(new[2])
        if old[0] != new[0]:
            e["changed"] += 1
            e["moves"][(old[0], new[0])] += 1
        if old[1] != new[1] and user:
            e["variants"][(old[1], new[1])].add(user)
    engine.dispose()

    assert reply.calls_replayed == len(rows) > 2000
    got = {c.context: c for c in reply.contexts}
    assert set(got) == set(expected)
    for context, e in expected.items():
        c = got[context]
        assert (c.calls, c.changed_calls, c.calls_without_user) == (
            e["calls"],
            e["changed"],
            e["no_user"],
        ), context
        assert c.changed_share == pytest.approx(e["changed"] / e["calls"])
        assert {(m.from_model, m.to_model): m.calls for m in c.moves} == dict(e["moves"])
        assert {(v.from_variant, v.to_variant): v.users for v in c.variant_moves} == {
            k: len(users) for k, users in e["variants"].items()
        }
        assert c.cost_per_day_before_usd == pytest.approx(e["before"], rel=1e-9)
        assert c.cost_per_day_after_usd == pytest.approx(e["after"], rel=1e-9)
        assert list(c.unreachable_models) == sorted(e["rb"] - e["ra"])
    # The change is visible where it should be.
    assert got["reranker"].changed_share == pytest.approx(1.0)
    assert "claude-3-sonnet" in got["premium.answer"].unreachable_models
    assert got["rag.answer"].variant_moves
    assert any("cooldowns" in caveat for caveat in reply.caveats)


async def test_preview_rejects_bad_input(seeded: Running) -> None:
    bad = [
        admin_pb2.PreviewConfigChangeRequest(),
        admin_pb2.PreviewConfigChangeRequest(
            changes=[admin_pb2.KeyChange(key="contexts/x", value_json='{"model": 1}')]
        ),
        admin_pb2.PreviewConfigChangeRequest(
            changes=[admin_pb2.KeyChange(key="runtime/x", value_json="{}")]
        ),
        admin_pb2.PreviewConfigChangeRequest(
            changes=[admin_pb2.KeyChange(key="contexts/x", value_json='{"model": "gpt-4o"}')],
            window_seconds=-5,
        ),
    ]
    for request in bad:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await seeded.admin.PreviewConfigChange(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
