"""`modelroute serve` with ResolveModel cut down, to measure what the rest of a call costs
(`bench/hotpath.py --floor`). A measuring tool, not a product mode.

`MODELROUTE_BENCH_VARIANT`:
- `answer-only`: after its first real answer for a request, ResolveModel returns that same
  answer again (same bytes as the echo server's): what the server costs around the handler
  (gRPC, auth, background tasks).
- `no-resolve`: the per-call parts that cannot be cached are the real code (validation,
  clock, decision id, and `ModelRouterService._answer`: response, span, decision metrics);
  the decision is the resolver's first one for this request: no resolution, quota
  admission or preference lookup.

Every other argument is `modelroute serve`'s.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from modelroute.server.api import router_service
from modelroute.server.api.errors import rpc
from modelroute.server.api.validation import raise_if_invalid, validate_resolve
from modelroute.server.cli import main
from modelroute.server.core.resolver import Decision

VARIANT = os.environ["MODELROUTE_BENCH_VARIANT"]
real_handler = router_service.ModelRouterService.ResolveModel
real_resolve = router_service.resolve  # type: ignore[attr-defined]
first: dict[bytes, tuple[Decision, Any]] = {}  # request bytes -> (decision, answer)
last_decision: list[Decision] = []


def remembering_resolve(*args: Any, **kwargs: Any) -> Decision:
    decision = real_resolve(*args, **kwargs)
    last_decision[:] = [decision]
    return decision


async def resolve_model(self: Any, request: Any, context: Any) -> Any:
    key = request.SerializeToString()
    known = first.get(key)
    if known is None:
        answer = await real_handler(self, request, context)
        first[key] = (last_decision[0], answer)
        return answer
    decision, answer = known
    if VARIANT == "answer-only":
        return answer
    started, started_ns = time.perf_counter(), time.time_ns()
    raise_if_invalid(validate_resolve(request))
    token = self._decision_id(request.context, decision, self._clock())
    return self._answer(request, context, decision, token, started, started_ns)


if VARIANT not in ("answer-only", "no-resolve"):
    sys.exit(f"MODELROUTE_BENCH_VARIANT must be answer-only or no-resolve, not {VARIANT!r}")
router_service.resolve = remembering_resolve  # type: ignore[attr-defined]
router_service.ModelRouterService.ResolveModel = rpc(resolve_model)  # type: ignore[method-assign]
sys.argv[0] = "modelroute"
main()
