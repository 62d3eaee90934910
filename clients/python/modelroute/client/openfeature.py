"""An OpenFeature provider for modelroute (`pip install 'modelroute[openfeature]'`).

    from openfeature import api
    from .openfeature import ModelrouteProvider

    api.set_provider_and_wait(ModelrouteProvider("modelroute:50051"))
    model = api.get_client().get_string_value("rag.answer", "gpt-4o-mini",
                                              EvaluationContext("user-42", {"tier": "free"}))

Flag key = context, value = model id; `targetingKey` = user id, `tier` = tier, other
fields = attributes. Evaluations go through the SDK's `ModelRouter` (gRPC, decision cache,
env pins, fail-safe default), so they cost a dict lookup when cached. The answer carries
the same variant / reason / metadata as modelroute's OFREP endpoint. A new configuration
revision announced by WatchConfig emits PROVIDER_CONFIGURATION_CHANGED; `track(context,
..., TrackingEventDetails(value=latency_ms, attributes={"model_id": ..., "decision_id":
..., "input_tokens": ..., "output_tokens": ..., "outcome": "OK"}))` is a ReportUsage.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final, TypeVar

import grpc
from modelroute.v1 import router_pb2
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import GeneralError, InvalidContextError, TypeMismatchError
from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType
from openfeature.flag_evaluation import Reason as OpenFeatureReason
from openfeature.provider import AbstractProvider, Metadata
from openfeature.track import TrackingEventDetails

from ._sync import ModelRouter
from .decision import Decision, Outcome, Source
from .errors import InvalidResolveRequestError, NoModelAvailableError

logger = logging.getLogger("modelroute.client.openfeature")
T = TypeVar("T")

# The same table as the server's OFREP endpoint (README "OpenFeature"), by reason name.
REASONS: Final[Mapping[str, str]] = {
    "ENV_OVERRIDE": OpenFeatureReason.STATIC,
    "OPERATOR_OVERRIDE": OpenFeatureReason.STATIC,
    "USER_PREFERENCE": OpenFeatureReason.TARGETING_MATCH,
    "EXPERIMENT": OpenFeatureReason.SPLIT,
    "ROLLOUT": OpenFeatureReason.SPLIT,
    "CONTEXT_DEFAULT": OpenFeatureReason.STATIC,
    "GLOBAL_DEFAULT": OpenFeatureReason.DEFAULT,
}
_TRACK_INTS: Final = ("input_tokens", "output_tokens", "latency_ms")


def resolve_arguments(context: EvaluationContext | None) -> dict[str, Any]:
    """ModelRouter.resolve keyword arguments for an evaluation context."""
    if context is None:
        return {}
    attributes: dict[str, str] = {}
    tier = None
    for name, value in context.attributes.items():
        if name == "tier":
            if not isinstance(value, str):
                raise InvalidContextError("tier must be a string")
            tier = value
        elif isinstance(value, bool):
            attributes[name] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            attributes[name] = str(value)
        elif value is not None:
            raise InvalidContextError(f"{name}: only strings, numbers and booleans are supported")
    return {"user": context.targeting_key or None, "tier": tier, "attributes": attributes}


def decision_metadata(decision: Decision) -> dict[str, str | bool | int | float]:
    """The decision as OpenFeature flag metadata (decisionId, provider, fallbacks, ...)."""
    metadata: dict[str, str | bool | int | float] = {
        "decisionId": decision.decision_id,
        "provider": decision.provider,
        "configRevision": str(decision.config_revision),
        "fallbacks": ",".join(decision.fallback_model_ids),
        "modelrouteReason": decision.reason.name,
        "source": decision.source.value,
    }
    if decision.experiment_id:
        metadata["experimentId"] = decision.experiment_id
    if decision.fallback_from:
        metadata["fallbackFrom"] = decision.fallback_from
        metadata["fallbackCause"] = decision.fallback_cause.name
    if decision.warnings:
        metadata["warnings"] = "; ".join(decision.warnings)
    return metadata


def _reason(decision: Decision) -> str:
    if decision.source is Source.LAST_KNOWN:
        return OpenFeatureReason.STALE  # modelroute unreachable: its last answer
    if decision.source is Source.STATIC_DEFAULT:
        return OpenFeatureReason.DEFAULT
    if decision.source is Source.ENV:
        return OpenFeatureReason.STATIC
    return REASONS.get(decision.reason.name, OpenFeatureReason.UNKNOWN)


class ModelrouteProvider(AbstractProvider):
    """OpenFeature provider over a `ModelRouter` (made from `target`/`router_options`, or
    given as `router`; a router the provider made is closed by `shutdown()`).
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        router: ModelRouter | None = None,
        **router_options: Any,
    ) -> None:
        super().__init__()
        self._owns_router = router is None
        self.router = router if router is not None else ModelRouter(target, **router_options)
        self._watch: concurrent.futures.Future[None] | None = None
        self.config_revision = 0

    def get_metadata(self) -> Metadata:
        """The provider's name as OpenFeature shows it: `modelroute`."""
        return Metadata(name="modelroute")

    # ---- lifecycle: follow WatchConfig on the router's loop ------------------------------

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Start following WatchConfig (PROVIDER_CONFIGURATION_CHANGED on new revisions)."""
        if self._watch is None:
            self._watch = asyncio.run_coroutine_threadsafe(self._follow(), self.router._loop)

    def shutdown(self) -> None:
        """Stop following WatchConfig."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(concurrent.futures.CancelledError, Exception):
                self._watch.result(timeout=5)
            self._watch = None
        if self._owns_router:
            self.router.close()

    async def _follow(self) -> None:
        """Each revision newer than the last seen is announced (the stream's first message
        is the revision in force when it (re)connects: announced only if it is newer).
        """
        aio = self.router.aio
        backoff = 0.05
        while True:
            try:
                stream = aio._start().WatchConfig(
                    router_pb2.WatchConfigRequest(), metadata=aio._metadata
                )
                async for message in stream:
                    backoff = 0.05
                    self._observe(message.config_revision)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return
                logger.debug("WatchConfig: %s; reconnecting", error.code().name)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _observe(self, revision: int) -> None:
        first = self.config_revision == 0
        if revision <= self.config_revision:
            return
        self.config_revision = revision
        if not first:
            self.emit_provider_configuration_changed(
                ProviderEventDetails(
                    message=f"modelroute configuration revision {revision}",
                    metadata={"configRevision": str(revision)},
                )
            )

    # ---- evaluation -----------------------------------------------------------------

    def _decide(self, flag_key: str, context: EvaluationContext | None) -> Decision:
        try:
            return self.router.resolve(flag_key, **resolve_arguments(context))
        except InvalidResolveRequestError as error:
            raise InvalidContextError(str(error)) from error
        except NoModelAvailableError as error:
            raise GeneralError(f"no model available: {error}") from error

    async def _decide_async(self, flag_key: str, context: EvaluationContext | None) -> Decision:
        # The router lives on its own loop: hand the call over, await it without blocking.
        decision_and_warning = await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(
                self.router.aio._resolve(flag_key, **_positional(context)), self.router._loop
            )
        )
        return decision_and_warning[0]

    @staticmethod
    def _details(decision: Decision) -> FlagResolutionDetails[str]:
        return FlagResolutionDetails(
            value=decision.model_id,
            variant=decision.variant_id or decision.reason.name,
            reason=_reason(decision),
            flag_metadata=decision_metadata(decision),
        )

    def resolve_string_details(
        self,
        flag_key: str,
        default_value: str,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[str]:
        """Resolve `flag_key` (a context) to a model id through the SDK's cached client."""
        return self._details(self._decide(flag_key, evaluation_context))

    async def resolve_string_details_async(
        self,
        flag_key: str,
        default_value: str,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[str]:
        """Async form of `resolve_string_details`."""
        try:
            return self._details(await self._decide_async(flag_key, evaluation_context))
        except InvalidResolveRequestError as error:
            raise InvalidContextError(str(error)) from error
        except NoModelAvailableError as error:
            raise GeneralError(f"no model available: {error}") from error

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[FlagValueType] | Mapping[str, FlagValueType],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[FlagValueType] | Mapping[str, FlagValueType]]:
        """The whole decision: {"model_id", "fallback_model_ids", "provider", ...}."""
        decision = self._decide(flag_key, evaluation_context)
        details = self._details(decision)
        value: dict[str, FlagValueType] = {
            "model_id": decision.model_id,
            "fallback_model_ids": list(decision.fallback_model_ids),
            "provider": decision.provider,
            "decision_id": decision.decision_id,
        }
        return FlagResolutionDetails(
            value=value,
            variant=details.variant,
            reason=details.reason,
            flag_metadata=details.flag_metadata,
        )

    def _not_a_model(self, flag_key: str) -> Any:
        raise TypeMismatchError(f"{flag_key!r} is a model choice: evaluate it as a string")

    def resolve_boolean_details(
        self, flag_key: str, default_value: bool, evaluation_context: Any = None
    ) -> FlagResolutionDetails[bool]:
        """Not supported: modelroute flags are strings (model ids); TYPE_MISMATCH."""
        return self._not_a_model(flag_key)  # type: ignore[no-any-return]

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: Any = None
    ) -> FlagResolutionDetails[int]:
        """Not supported: modelroute flags are strings (model ids); TYPE_MISMATCH."""
        return self._not_a_model(flag_key)  # type: ignore[no-any-return]

    def resolve_float_details(
        self, flag_key: str, default_value: float, evaluation_context: Any = None
    ) -> FlagResolutionDetails[float]:
        """Not supported: modelroute flags are strings (model ids); TYPE_MISMATCH."""
        return self._not_a_model(flag_key)  # type: ignore[no-any-return]

    # ---- usage ------------------------------------------------------------------------

    def track(
        self,
        tracking_event_name: str,
        evaluation_context: EvaluationContext | None = None,
        tracking_event_details: TrackingEventDetails | None = None,
    ) -> None:
        """A usage report: event name = context; attributes `model_id` (required),
        `decision_id`, `input_tokens`, `output_tokens`, `latency_ms` (or the event's
        `value`), `outcome` (OK, RATE_LIMITED, ...), `error_message`. Queued, batched and
        retried by the router like `ModelRouter.report`.
        """
        attributes = dict(tracking_event_details.attributes) if tracking_event_details else {}
        model_id = attributes.pop("model_id", None)
        if not isinstance(model_id, str) or not model_id:
            logger.warning(
                "track(%r) without a model_id attribute: not reported", tracking_event_name
            )
            return
        fields: dict[str, Any] = {}
        for name in _TRACK_INTS:
            if isinstance(attributes.get(name), int | float):
                fields[name] = int(attributes[name])  # type: ignore[arg-type]
        if "latency_ms" not in fields and tracking_event_details and tracking_event_details.value:
            fields["latency_ms"] = int(tracking_event_details.value)
        outcome = str(attributes.get("outcome", "OK")).upper().removeprefix("OUTCOME_")
        fields["outcome"] = Outcome[outcome] if outcome in Outcome.__members__ else Outcome.OTHER
        for name in ("decision_id", "error_message"):
            if isinstance(attributes.get(name), str):
                fields[name] = attributes[name]
        if evaluation_context is not None:
            arguments = resolve_arguments(evaluation_context)
            fields["user"], fields["tier"] = arguments["user"], arguments["tier"]
        self.router.report(tracking_event_name, model_id, **fields)


def _positional(context: EvaluationContext | None) -> dict[str, Any]:
    """AsyncModelRouter._resolve's arguments (it takes user and tier positionally)."""
    arguments = resolve_arguments(context)
    return {
        "user": arguments.get("user"),
        "tier": arguments.get("tier"),
        "attributes": arguments.get("attributes"),
    }
