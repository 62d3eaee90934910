"""Plain Python views of the wire types, so callers need not touch protobuf."""

from __future__ import annotations

import dataclasses
import enum
import re

from modelroute.v1 import router_pb2, types_pb2


class Outcome(enum.IntEnum):
    """How an LLM call ended (mirrors `modelroute.v1.Outcome`)."""

    OK = types_pb2.OUTCOME_OK
    RATE_LIMITED = types_pb2.OUTCOME_RATE_LIMITED
    QUOTA_EXCEEDED = types_pb2.OUTCOME_QUOTA_EXCEEDED
    SERVER_ERROR = types_pb2.OUTCOME_SERVER_ERROR
    TIMEOUT = types_pb2.OUTCOME_TIMEOUT
    INVALID_REQUEST = types_pb2.OUTCOME_INVALID_REQUEST
    CONTENT_FILTERED = types_pb2.OUTCOME_CONTENT_FILTERED
    OTHER = types_pb2.OUTCOME_OTHER

    @property
    def starts_cooldown(self) -> bool:
        """The server cools the model down on these; the client reports them at once."""
        return self in (Outcome.RATE_LIMITED, Outcome.QUOTA_EXCEEDED)


class Reason(enum.IntEnum):
    """Which rule chose the model (mirrors `modelroute.v1.Reason`)."""

    UNSPECIFIED = types_pb2.REASON_UNSPECIFIED
    ENV_OVERRIDE = types_pb2.REASON_ENV_OVERRIDE
    OPERATOR_OVERRIDE = types_pb2.REASON_OPERATOR_OVERRIDE
    USER_PREFERENCE = types_pb2.REASON_USER_PREFERENCE
    EXPERIMENT = types_pb2.REASON_EXPERIMENT
    CONTEXT_DEFAULT = types_pb2.REASON_CONTEXT_DEFAULT
    GLOBAL_DEFAULT = types_pb2.REASON_GLOBAL_DEFAULT
    ROLLOUT = types_pb2.REASON_ROLLOUT

    @classmethod
    def _missing_(cls, value: object) -> Reason:
        return cls.UNSPECIFIED  # a reason newer than this SDK must not fail the call


class FallbackCause(enum.IntEnum):
    """Why the preferred model was skipped (mirrors `modelroute.v1.FallbackCause`)."""

    UNSPECIFIED = types_pb2.FALLBACK_CAUSE_UNSPECIFIED
    DISABLED = types_pb2.FALLBACK_CAUSE_DISABLED
    UNKNOWN_MODEL = types_pb2.FALLBACK_CAUSE_UNKNOWN_MODEL
    COOLDOWN = types_pb2.FALLBACK_CAUSE_COOLDOWN
    PROVIDER_QUOTA = types_pb2.FALLBACK_CAUSE_PROVIDER_QUOTA
    BUDGET = types_pb2.FALLBACK_CAUSE_BUDGET
    EXCLUDED_BY_CALLER = types_pb2.FALLBACK_CAUSE_EXCLUDED_BY_CALLER
    TIER_NOT_ALLOWED = types_pb2.FALLBACK_CAUSE_TIER_NOT_ALLOWED

    @classmethod
    def _missing_(cls, value: object) -> FallbackCause:
        return cls.UNSPECIFIED  # a cause newer than this SDK must not fail the call


class Source(enum.Enum):
    """Where a decision came from; anything but SERVER/CACHE means modelroute was bypassed."""

    SERVER = "server"
    CACHE = "cache"
    ENV = "env"  # MODEL_<CTX> in this process
    LAST_KNOWN = "last_known"  # control plane unreachable: the last answer it gave
    STATIC_DEFAULT = "static_default"  # unreachable and never answered: configured default


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """Which model to call for one LLM call, and what to try when it fails."""

    context: str
    model_id: str
    fallback_model_ids: tuple[str, ...] = ()
    provider: str = ""
    reason: Reason = Reason.UNSPECIFIED
    decision_id: str = ""
    config_revision: int = 0
    fallback_from: str = ""
    fallback_cause: FallbackCause = FallbackCause.UNSPECIFIED
    experiment_id: str = ""
    variant_id: str = ""
    warnings: tuple[str, ...] = ()
    cache_ttl: float = 0.0
    source: Source = Source.SERVER

    @property
    def models(self) -> tuple[str, ...]:
        """The model, then its fallbacks: the order `call_with_fallback` tries them in."""
        return (self.model_id, *self.fallback_model_ids)

    @classmethod
    def from_response(cls, context: str, response: router_pb2.ResolveModelResponse) -> Decision:
        """The Decision a ResolveModel answer describes, for `context`."""
        return cls(
            context=context,
            model_id=response.model_id,
            fallback_model_ids=tuple(response.fallback_model_ids),
            provider=response.provider,
            reason=Reason(response.reason),
            decision_id=response.decision_id,
            config_revision=response.config_revision,
            fallback_from=response.fallback.from_model_id,
            fallback_cause=FallbackCause(response.fallback.cause),
            experiment_id=response.experiment_id,
            variant_id=response.variant_id,
            warnings=tuple(response.warnings),
            cache_ttl=response.cache_ttl.ToTimedelta().total_seconds(),
        )


def env_var_for(context: str) -> str:
    """`rag.answer` → `MODEL_RAG_ANSWER` (DESIGN.md, resolution order step 1)."""
    return "MODEL_" + re.sub(r"[^A-Z0-9]", "_", context.upper())
