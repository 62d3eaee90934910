"""modelroute.client: which LLM model to use, fallback down the chain, usage reports.

Ask modelroute which model serves a context, fall back down the chain when a provider
fails, and report usage. See docs/clients/python.md.
"""

from ._async import AsyncModelRouter
from ._caches import ModelClientCache
from ._options import RouterOptions
from ._sender import CloseResult
from ._sync import ModelRouter
from .bucketing import assign_variant, bucket_of
from .classify import Failure, FailureClassifier
from .decision import Decision, FallbackCause, Outcome, Reason, Source, env_var_for
from .errors import (
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
