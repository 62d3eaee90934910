"""Operator actions over HTTP (the dashboard's write side), under /api/admin/:
config history, diff and rollback, guarded config writes (overrides, experiments), impact
preview, clearing a cooldown, and the support desk's view of a user's preferred model.

Every config write is the same guarded write as `config apply` (ApplyConfig): it names the
revision the form was loaded at, and a concurrent change answers 409 "the configuration
changed since you loaded it" with nothing written. The bearer token's name is recorded as
the actor of each change.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.security import HTTPAuthorizationCredentials
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from modelroute.admin.v1 import admin_pb2
from modelroute.storage.errors import StoreUnavailableError
from modelroute.storage.etcd import EtcdClient, read_prefix
from modelroute.storage.preference_store import StoredPreference
from modelroute.storage.runtime_store import RuntimeStore
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core.snapshot import Snapshot
from ..runtime.change_meta import ACTOR_OPERATOR, CURRENT_ACTOR
from ..runtime.history_recorder import is_decision_key, redact
from ..runtime.preferences import PreferenceCache
from ..runtime.runtime_state import clear_cooldown
from .admin_http import API_PREFIX, BEARER
from .admin_service import AdminService
from .errors import invalid_argument, not_found, store_unavailable
from .rollout_actions import RolloutActionBody, rollout_action
from .validation import (
    TIER_PATTERN,
    check_choosable,
    preference_violations,
)

Handler = TypeVar("Handler", bound=Callable[..., Any])


class Change(BaseModel):
    key: str = Field(description="Relative key, e.g. overrides/rag.answer")
    value: dict[str, Any] | None = Field(default=None, description="The new value (JSON)")
    delete: bool = False


class ApplyBody(BaseModel):
    changes: list[Change]
    expected_revision: int = Field(description="The revision the form was loaded at")
    note: str = ""
    dry_run: bool = False


class RollbackBody(BaseModel):
    revision: int
    expected_revision: int = 0
    note: str = ""
    dry_run: bool = False


class PreviewBody(BaseModel):
    changes: list[Change]
    window_seconds: int = 86_400


class CooldownBody(BaseModel):
    subject: str = Field(description="A model id, or provider:<name>")


class PreferenceBody(BaseModel):
    model_id: str
    tier: str = ""
    context: str = ""


def _json(message: Message) -> dict[str, Any]:
    return MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _key_changes(changes: list[Change]) -> list[admin_pb2.KeyChange]:
    return [
        admin_pb2.KeyChange(
            key=c.key, value_json=json.dumps(c.value or {}) if not c.delete else "", delete=c.delete
        )
        for c in changes
    ]


async def _operator(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> str:
    """The caller's admin token name (401 without a valid token)."""
    identify: Callable[[str | None], str | None] | None = request.app.state.identify_operator
    if identify is None:
        return ACTOR_OPERATOR
    name = identify(credentials.credentials if credentials is not None else None)
    if name is None:
        raise StarletteHTTPException(401, "a valid operator bearer token is required")
    return name


Operator = Annotated[str, Depends(_operator)]


def add_operator_routes(
    app: FastAPI,
    admin: AdminService,
    *,
    identify: Callable[[str | None], str | None] | None,
    etcd: EtcdClient,
    prefix: str,
    runtime: RuntimeStore,
    snapshot: Callable[[], Snapshot | None],
    preferences: PreferenceCache | None,
    clock: Callable[[], datetime],
) -> None:
    """Registers the routes on `app` (flat, like the read-only ones)."""

    app.state.identify_operator = identify

    def route(method: str, path: str, tag: str) -> Callable[[Handler], Handler]:
        return app.api_route(API_PREFIX + path, methods=[method], tags=[tag])

    def history() -> Any:
        if admin.history is None:
            raise store_unavailable(StoreUnavailableError("database", "no database"))
        return admin.history

    @route("GET", "/config/history", "config history")
    async def config_history(
        actor: Operator,
        key_prefix: str = "",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        up_to_revision: Annotated[int, Query(ge=0)] = 0,
        since: datetime | None = None,
    ) -> dict[str, Any]:
        """Recorded changes, newest first (ListConfigChanges)."""
        request = admin_pb2.ListConfigChangesRequest(
            key_prefix=key_prefix, limit=limit, up_to_revision=up_to_revision
        )
        if since is not None:
            request.since.FromDatetime(since if since.tzinfo else since.replace(tzinfo=UTC))
        return _json(await history().list_changes(request))

    @route("GET", "/config/at", "config history")
    async def config_at(
        actor: Operator, revision: Annotated[int, Query(ge=0)] = 0
    ) -> dict[str, Any]:
        """Every decision-shaping key's value in force at a revision (GetConfigAt)."""
        return _json(await history().config_at(admin_pb2.GetConfigAtRequest(revision=revision)))

    @route("GET", "/config/current", "config history")
    async def config_current(actor: Operator) -> dict[str, Any]:
        """What etcd holds now and the revision read: forms send it back as
        `expected_revision`, so a change made meanwhile is refused, not overwritten."""
        revision, stored = await read_prefix(etcd, prefix)
        values = {
            key: json.loads(redact(key, value.value) or "null")
            for key, value in sorted(stored.items())
            if is_decision_key(key)
        }
        return {"revision": revision, "values": values}

    @route("POST", "/config/apply", "config changes")
    async def config_apply(actor: Operator, body: Annotated[ApplyBody, Body()]) -> dict[str, Any]:
        """A guarded config write (ApplyConfig): overrides, experiments, weights."""
        if body.expected_revision <= 0:
            raise invalid_argument([("expected_revision", "the revision the form was loaded at")])
        CURRENT_ACTOR.set(actor)
        request = admin_pb2.ApplyConfigRequest(
            changes=_key_changes(body.changes),
            expected_revision=body.expected_revision,
            note=body.note,
            dry_run=body.dry_run,
        )
        return _json(await admin.apply_config(request))

    @route("POST", "/config/rollback", "config changes")
    async def config_rollback(
        actor: Operator, body: Annotated[RollbackBody, Body()]
    ) -> dict[str, Any]:
        """Put every key back to its value at a revision (RollbackConfig)."""
        CURRENT_ACTOR.set(actor)
        request = admin_pb2.RollbackConfigRequest(
            revision=body.revision,
            expected_revision=body.expected_revision,
            note=body.note,
            dry_run=body.dry_run,
        )
        return _json(await history().rollback(request))

    @route("POST", "/config/preview", "config changes")
    async def config_preview(
        actor: Operator, body: Annotated[PreviewBody, Body()]
    ) -> dict[str, Any]:
        """Impact of a change on recorded traffic (PreviewConfigChange); writes nothing."""
        if admin.impact is None:
            raise store_unavailable(StoreUnavailableError("database", "no database"))
        request = admin_pb2.PreviewConfigChangeRequest(
            changes=_key_changes(body.changes), window_seconds=body.window_seconds
        )
        return _json(await admin.impact.preview(request))

    @route("POST", "/rollouts/{rollout_id}/action", "rollouts")
    async def rollout_operator_action(
        actor: Operator, rollout_id: str, body: Annotated[RolloutActionBody, Body()]
    ) -> dict[str, Any]:
        """Pause, resume or stop a rollout, or set its step or share (a guarded write)."""
        return await rollout_action(etcd, prefix, rollout_id, body, actor, clock())

    @route("POST", "/cooldowns/clear", "runtime")
    async def cooldown_clear(
        actor: Operator, body: Annotated[CooldownBody, Body()]
    ) -> dict[str, Any]:
        """End a model's (or `provider:<name>`'s) cooldown on every replica."""
        subject = body.subject
        key = (
            f"providers/{subject.removeprefix('provider:')}"
            if subject.startswith("provider:")
            else f"models/{subject}"
        )
        if not await clear_cooldown(runtime, key):
            raise not_found("COOLDOWN_NOT_FOUND", f"no active cooldown for {key}")
        return {"cleared": key}

    def desk() -> PreferenceCache:
        if preferences is None:
            raise store_unavailable(StoreUnavailableError("database", "no preference store"))
        return preferences

    @route("GET", "/users/{user_id}/preferences", "preferences")
    async def user_preferences(actor: Operator, user_id: str) -> dict[str, Any]:
        """A user's preferred models by context ("" = every user-selectable context)."""
        violations = preference_violations("user_id", user_id, "")
        if violations:
            raise invalid_argument(violations)
        try:
            stored = await desk().for_user(user_id)
        except StoreUnavailableError as exc:
            raise store_unavailable(exc) from None
        return {
            "user_id": user_id,
            "preferences": [
                {
                    "context": p.context,
                    "model_id": p.model_id,
                    "updated_at": p.updated_at.isoformat(),
                }
                for p in sorted(stored.values(), key=lambda p: p.context)
            ],
        }

    @route("PUT", "/users/{user_id}/preferences", "preferences")
    async def set_user_preference(
        actor: Operator, user_id: str, body: Annotated[PreferenceBody, Body()]
    ) -> dict[str, Any]:
        """Set a user's preferred model within the tier rules (as SetUserPreference)."""
        violations = preference_violations("user_id", user_id, body.context)
        if not body.model_id:
            violations.append(("model_id", "required"))
        if not TIER_PATTERN.match(body.tier):
            violations.append(("tier", "at most 64 letters, digits and . _ -"))
        if violations:
            raise invalid_argument(violations)
        current = snapshot()
        if current is None:
            raise store_unavailable(StoreUnavailableError("database", "no configuration loaded"))
        check_choosable(current, body.context, body.model_id, body.tier)
        stored = StoredPreference(user_id, body.context, body.model_id, clock())
        try:
            await desk().set(stored, runtime)
        except StoreUnavailableError as exc:
            raise store_unavailable(exc) from None
        return {"user_id": user_id, "context": body.context, "model_id": body.model_id}
