"""`/api/admin/rollouts`: the admin HTTP shape of GetRolloutStatus (dashboard panel)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class GuardrailStatusModel(BaseModel):
    metric: str
    bound: str
    candidate_value: float
    baseline_value: float
    estimate: float = Field(description="Excess over what the bound tolerates (> 0: worse)")
    interval_low: float = Field(description="Always-valid 95% interval of the excess")
    interval_high: float
    breached: bool
    candidate_samples: int
    baseline_samples: int
    description: str


class RolloutDecisionModel(BaseModel):
    time: str
    action: str
    step: int
    percent: int
    detail: str


class RolloutStatusModel(BaseModel):
    rollout_id: str
    context: str
    candidate: str
    baseline_model: str
    state: str = Field(description="PENDING, RUNNING, PAUSED, ROLLED_BACK, COMPLETED, DISABLED")
    step: int
    steps: int
    percent: int = Field(description="The candidate's share of the context's traffic")
    started_at: str | None = None
    step_started_at: str | None = None
    candidate_calls: int
    baseline_calls: int
    step_candidate_calls: int
    guardrails: list[GuardrailStatusModel]
    decisions: list[RolloutDecisionModel]
    enabled: bool


class RolloutList(BaseModel):
    rollouts: list[RolloutStatusModel]
