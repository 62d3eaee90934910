"""The runtime-state port and the algorithms on it, against both implementations.

Every test runs twice: on `EtcdRuntimeStore` over the real etcd, and on
`InMemoryRuntimeStore`. The quota test runs the real QuotaTracker / QuotaPublisher of
several replicas over one store: the request limit holds (nothing admitted beyond it)
because publications are guarded writes; the in-memory run proves the algorithm, the
etcd run proves the port keeps its promises.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aetcd
import pytest
from modelroute.server.core.resolver import Cause, ResolveInput, resolve
from modelroute.server.core.snapshot import Snapshot, SnapshotBuilder
from modelroute.server.runtime.admission import admit as admit_decision
from modelroute.server.runtime.decision_keys import DecisionKeyManager
from modelroute.server.runtime.keys import COOLDOWN_DIR, DECISION_KEY, USAGE_DIR
from modelroute.server.runtime.quota_counts import Admission
from modelroute.server.runtime.quota_publisher import QuotaPublisher
from modelroute.server.runtime.quotas import QuotaTracker
from modelroute.server.runtime.runtime_state import RuntimeState, clear_cooldown, start_cooldown
from modelroute.storage.errors import StoreUnavailableError
from modelroute.storage.memory_runtime_store import InMemoryRuntimeStore
from modelroute.storage.runtime_store import EtcdRuntimeStore, RuntimeStore
from modelroute.storage.updates import ConfigUpdate

from tests.helpers import eventually

NOW = datetime(2026, 11, 24, 12, 0, 30, tzinfo=UTC)
LIMIT = 40


@pytest.fixture(params=["memory", "etcd"])
async def store(
    request: pytest.FixtureRequest, etcd: aetcd.Client, prefix: str
) -> AsyncIterator[RuntimeStore]:
    if request.param == "memory":
        yield InMemoryRuntimeStore()
    else:
        yield EtcdRuntimeStore(etcd, prefix)


def snapshot_with_limit(limit: int) -> Snapshot:
    values = {
        "providers/p": {"requests_per_minute": limit},
        "models/m": {"provider": "p"},
        "models/n": {"provider": "q"},  # the fallback, on a provider without limits
        "settings": {"default_model": "m", "default_fallbacks": ["n"]},
    }
    snapshot, rejections = SnapshotBuilder().apply(
        1, {k: json.dumps(v).encode() for k, v in values.items()}, NOW
    )
    assert not rejections and snapshot is not None
    return snapshot


async def admit(tracker: QuotaTracker, publisher: QuotaPublisher) -> bool:
    """What ResolveModel does: admit, or publish a new reservation and ask again."""
    for _ in range(8):
        verdict = tracker.admit("p", NOW)
        if verdict is Admission.ADMITTED:
            return True
        if verdict is Admission.EXCEEDED:
            return False
        await publisher.publish_once()
    return False


async def test_request_limit_holds_for_replicas_sharing_one_store(store: RuntimeStore) -> None:
    snapshot = snapshot_with_limit(LIMIT)
    ticks = iter(range(1_000_000))
    replicas = []
    for name in ("a", "b", "c"):
        tracker = QuotaTracker(
            f"replica-{name}",
            lambda: snapshot,
            clock=lambda: NOW,
            monotonic=lambda: float(next(ticks)),  # steady demand between publications
        )
        replicas.append((tracker, QuotaPublisher(tracker, store)))
    for _, publisher in replicas:
        await publisher.publish_once()

    chooser = random.Random(7)
    admitted = {tracker.replica_id: 0 for tracker, _ in replicas}
    for _ in range(3 * LIMIT):
        tracker, publisher = chooser.choice(replicas)
        if await admit(tracker, publisher):
            admitted[tracker.replica_id] += 1

    total = sum(admitted.values())
    assert total <= LIMIT, admitted  # the bound: never more than the limit in one window
    # Every replica was served, and most of the limit was usable.
    assert all(count > 0 for count in admitted.values()), admitted
    assert total >= LIMIT // 2, admitted
    published = await store.read_dir(USAGE_DIR)
    assert sorted(published.entries) == sorted(admitted)
    reserved = sum(
        json.loads(entry.value)["reserved"].get("requests_per_minute", {}).get("p", 0)
        for entry in published.entries.values()
    )
    assert reserved <= LIMIT  # the reservations in the store add up to at most the limit


class SlowWrites:
    """A real store whose guarded writes take `delay` seconds more (etcd on a busy box)."""

    def __init__(self, inner: RuntimeStore, delay: float) -> None:
        self._inner = inner
        self._delay = delay

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def put_if_others_unchanged(self, *args: object, **kwargs: object) -> bool:
        await asyncio.sleep(self._delay)
        return await self._inner.put_if_others_unchanged(*args, **kwargs)  # type: ignore[arg-type]


async def test_slow_publications_do_not_let_admissions_past_the_limit(
    store: RuntimeStore,
) -> None:
    """The bound holds while etcd answers, however slowly: a resolve that needs a new
    reservation waits for the publication instead of counting on a stale view (it once
    gave up after 0.25 s and admitted 601 of 600 in tests/test_quotas.py)."""
    limit = 20
    snapshot = snapshot_with_limit(limit)
    slow: RuntimeStore = SlowWrites(store, 0.3)  # type: ignore[assignment]
    replicas = []
    for name in ("a", "b"):
        tracker = QuotaTracker(f"replica-{name}", lambda: snapshot, clock=lambda: NOW)
        replicas.append((tracker, RuntimeState(tracker)))
    publishing = [asyncio.create_task(QuotaPublisher(t, slow).run()) for t, _ in replicas]
    request = ResolveInput("any")

    async def resolve_on(tracker: QuotaTracker, runtime: RuntimeState) -> str:
        decision = resolve(snapshot, request, NOW, runtime)
        served, _ = await admit_decision(
            tracker, snapshot, request, decision, NOW, runtime, lambda: NOW
        )
        if served.model_id == "n":  # fell back, and says why
            assert served.fallback_cause is Cause.PROVIDER_QUOTA
        return served.model_id

    try:
        served = await asyncio.gather(*(resolve_on(*replicas[i % 2]) for i in range(3 * limit)))
    finally:
        for task in publishing:
            task.cancel()
        await asyncio.gather(*publishing, return_exceptions=True)
    assert 0 < served.count("m") <= limit, served.count("m")
    assert served.count("m") + served.count("n") == 3 * limit  # the rest fell back


class LosesFirstWrites(SlowWrites):
    """A real store on which the first `losses` guarded writes (each `delay` s) find that
    another replica published first, as on a busy box with several replicas."""

    def __init__(self, inner: RuntimeStore, delay: float, losses: int, tracker: QuotaTracker):
        super().__init__(inner, delay)
        self._losses = losses
        self._tracker = tracker
        self.publishing_seen: list[bool] = []  # tracker.publishing_ok at each write

    async def put_if_others_unchanged(self, *args: object, **kwargs: object) -> bool:
        self.publishing_seen.append(self._tracker.publishing_ok)
        if self._losses:
            self._losses -= 1
            await asyncio.sleep(self._delay)
            return False
        return await super().put_if_others_unchanged(*args, **kwargs)


async def test_a_publication_slowed_by_contention_is_not_an_outage(store: RuntimeStore) -> None:
    """Seven lost guarded writes of 0.3 s each take longer than one publication may, yet
    every step answered: etcd is reachable, so the replica must not switch to counting
    locally (that let 50 of 20 through in the test above on a busy box)."""
    snapshot = snapshot_with_limit(20)
    tracker = QuotaTracker("replica-a", lambda: snapshot, clock=lambda: NOW)
    contended = LosesFirstWrites(store, 0.3, losses=7, tracker=tracker)
    publishing = asyncio.create_task(QuotaPublisher(tracker, contended).run())  # type: ignore[arg-type]
    try:

        async def published() -> None:
            assert "replica-a" in (await store.read_dir(USAGE_DIR)).entries

        await eventually(published, timeout=10)
    finally:
        publishing.cancel()
        await asyncio.gather(publishing, return_exceptions=True)
    assert len(contended.publishing_seen) >= 8  # the seven lost writes, then the one that won
    assert all(contended.publishing_seen), contended.publishing_seen
    assert tracker.publishing_ok


async def test_a_call_waiting_for_a_share_falls_back_before_its_deadline(
    store: RuntimeStore,
) -> None:
    """A resolve with a deadline does not wait past it for a slow publication: it is
    served a fallback (PROVIDER_QUOTA) in time; without a deadline it waits and is admitted."""
    snapshot = snapshot_with_limit(20)
    tracker = QuotaTracker("replica-a", lambda: snapshot, clock=lambda: NOW)
    runtime = RuntimeState(tracker)
    publishing = asyncio.create_task(QuotaPublisher(tracker, SlowWrites(store, 0.3)).run())  # type: ignore[arg-type]
    request = ResolveInput("any")

    async def served(time_left: float | None) -> tuple[str, Cause | None]:
        decision = resolve(snapshot, request, NOW, runtime)
        decision, _ = await admit_decision(
            tracker, snapshot, request, decision, NOW, runtime, lambda: NOW, lambda: time_left
        )
        return decision.model_id, decision.fallback_cause

    try:
        # No reservation is published yet: the first admission needs one (0.3 s away).
        assert await served(0.1) == ("n", Cause.PROVIDER_QUOTA)
        assert await served(None) == ("m", None)
    finally:
        publishing.cancel()
        await asyncio.gather(publishing, return_exceptions=True)


async def test_a_cooldown_is_written_read_back_and_cleared(store: RuntimeStore) -> None:
    until = await start_cooldown(store, "models/m", timedelta(seconds=30), "RATE_LIMITED", NOW)
    assert until == NOW + timedelta(seconds=30)
    stored = await store.read_dir(COOLDOWN_DIR)
    assert json.loads(stored.entries["models/m"].value) == {
        "until": until.isoformat(),
        "reason": "RATE_LIMITED",
    }
    runtime = RuntimeState()
    runtime.apply_update(
        ConfigUpdate(
            stored.revision, {f"{COOLDOWN_DIR}models/m": stored.entries["models/m"].value}, True
        )
    )
    assert runtime.active(NOW) == {"models/m": until}

    assert await clear_cooldown(store, "models/m") is True
    assert await clear_cooldown(store, "models/m") is False  # nothing left to clear
    assert (await store.read_dir(COOLDOWN_DIR)).entries == {}


async def test_the_first_decision_key_proposed_wins(store: RuntimeStore, tmp_path: Path) -> None:
    first = DecisionKeyManager.starting(tmp_path / "a")
    second = DecisionKeyManager.starting(tmp_path / "b")
    assert first.tokens.key != second.tokens.key
    await first.ensure_in_etcd(store)
    await second.ensure_in_etcd(store)
    stored = await store.read_dir(DECISION_KEY)
    assert [entry.value for entry in stored.entries.values()] == [first.tokens.key.hex().encode()]
    assert await store.create_if_absent(DECISION_KEY, b"00") is False


async def test_a_guarded_put_fails_after_another_key_changed(store: RuntimeStore) -> None:
    lease = await store.grant_lease(60)
    assert await store.put_if_others_unchanged(
        "dir/a", b"1", directory="dir/", since_revision=0, lease=lease
    )
    seen = (await store.read_dir("dir/")).revision
    await store.put("dir/b", b"x")
    # `dir/b` changed after `seen`: a's write is refused until it has looked again.
    assert not await store.put_if_others_unchanged(
        "dir/a", b"2", directory="dir/", since_revision=seen, lease=lease
    )
    seen = (await store.read_dir("dir/")).revision
    assert await store.put_if_others_unchanged(
        "dir/a", b"2", directory="dir/", since_revision=seen, lease=lease
    )
    # Its own key changing does not block it; keys outside the directory do not either.
    await store.put("other", b"y")
    assert await store.put_if_others_unchanged(
        "dir/a", b"3", directory="dir/", since_revision=seen, lease=lease
    )
    entries = (await store.read_dir("dir/")).entries
    assert {name: entry.value for name, entry in entries.items()} == {"a": b"3", "b": b"x"}


async def test_an_unreachable_store_raises_the_storage_error() -> None:
    memory = InMemoryRuntimeStore()
    memory.available = False
    with pytest.raises(StoreUnavailableError):
        await memory.put("k", b"v")
    unreachable = EtcdRuntimeStore(aetcd.Client(host="127.0.0.1", port=1, timeout=1), "/x/")
    with pytest.raises(StoreUnavailableError) as caught:
        await unreachable.put("k", b"v")
    assert caught.value.backend == "etcd"
