"""modelroute.client: which LLM model to use, fallback down the chain, usage reports.

Ask modelroute which model serves a context, fall back down the chain when a provider
fails, and report usage. See docs/clients/python.md.
"""

from modelroute.client._async import AsyncModelRouter
from modelroute.client._caches import ModelClientCache
from modelroute.client._options import RouterOptions
from modelroute.client._sender import CloseResult
from modelroute.client._sync import ModelRouter
from modelroute.client.bucketing import assign_variant, bucket_of
from modelroute.client.classify import Failure, FailureClassifier
from modelroute.client.decision import Decision, FallbackCause, Outcome, Reason, Source, env_var_for
from modelroute.client.errors import (
    AllModelsFailedError,
    Attempt,
    ControlPlaneUnavailableError,
    ControlPlaneUnavailableWarning,
    InvalidResolveRequestError,
    ModelRouteError,
    NoModelAvailableError,
    RejectedReport,
    ReportDeliveryError,
    ReportRejectedWarning,
)

__all__ = [
    "AllModelsFailedError",
    "AsyncModelRouter",
    "Attempt",
    "CloseResult",
    "ControlPlaneUnavailableError",
    "ControlPlaneUnavailableWarning",
    "Decision",
    "Failure",
    "FailureClassifier",
    "FallbackCause",
    "InvalidResolveRequestError",
    "ModelClientCache",
    "ModelRouteError",
    "ModelRouter",
    "NoModelAvailableError",
    "Outcome",
    "Reason",
    "RejectedReport",
    "ReportDeliveryError",
    "ReportRejectedWarning",
    "RouterOptions",
    "Source",
    "assign_variant",
    "bucket_of",
    "env_var_for",
]
