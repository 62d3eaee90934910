"""What the router answers without the server: the last known decision or the static
default (with the warning to show), and the retry hint of a refused call.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from .decision import Decision, Source
from .errors import ControlPlaneUnavailableError

logger = logging.getLogger("modelroute.client")


def fail_safe_decision(
    known: Decision | None,
    context: str,
    exclude_models: Sequence[str],
    default_model: str | None,
    default_fallbacks: tuple[str, ...],
    target: str,
    error: grpc.aio.AioRpcError,
) -> tuple[Decision, str]:
    """The decision to use while `target` is unreachable, and the warning to show."""
    if known is not None:
        decision = dataclasses.replace(known, source=Source.LAST_KNOWN)
        what = "the last known answer"
    elif default_model:
        decision = Decision(context, default_model, default_fallbacks, source=Source.STATIC_DEFAULT)
        what = "the static default"
    else:
        raise ControlPlaneUnavailableError(
            f"modelroute at {target} is unreachable ({error.code().name}) and no "
            "default_model is configured"
        ) from error
    if exclude_models:  # the caller just saw these fail; do not hand them back first
        models = [m for m in decision.models if m not in exclude_models]
        decision = dataclasses.replace(
            decision,
            model_id=models[0] if models else decision.model_id,
            fallback_model_ids=tuple(models[1:]) if models else decision.fallback_model_ids,
        )
    message = (
        f"modelroute at {target} unreachable ({error.code().name}); using {what} "
        f"{decision.model_id!r} for {context!r}"
    )
    logger.warning(message)
    return decision, message


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """RetryInfo from the status details trailer, if the server sent one."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        return None
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            seconds: float = info.retry_delay.ToTimedelta().total_seconds()
            return seconds
    return None
