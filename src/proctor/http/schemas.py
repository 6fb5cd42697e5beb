"""The API's DTOs (pydantic): request bodies, and the response shapes for OpenAPI.

Responses are built by ``proctor.cli.render.plan_json`` and friends and sent as JSON
without going through these models (no second serialisation on the hot path); a unit test
validates real responses against them with ``extra="forbid"``, so the published schema is
the shape actually sent. The plan manifest is documented by ``PlanManifest`` but validated
by the gateway, which audits every rejected plan.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from proctor.core.lifecycle import PlanStatus

__all__ = [
    "ApproveBody",
    "AuditEventList",
    "CommentBody",
    "ConsistencyProof",
    "DeadLetters",
    "ErrorBody",
    "Health",
    "InclusionProof",
    "KeysOut",
    "PlanList",
    "PlanManifest",
    "PlanOut",
    "WhoAmI",
]

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$"
# A person's name (``proctor.core.plans.PERSON_NAME``): the ids' grammar plus "@".
PERSON_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}$"
MAX_COMMENT = 2000


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(_Out):
    """Every error: a stable code, a message, and the field at fault (or null)."""

    code: str = Field(description="Stable error code, e.g. `permission_denied`.")
    message: str
    field: str | None
    hint: str | None = Field(default=None, description="What to do next, when known.")


# --------------------------------------------------------------------------- requests


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CommentBody(_In):
    """Body of confirm, reject and undo."""

    comment: str = Field(default="", max_length=MAX_COMMENT)


class ResolveBody(_In):
    """Body of resolve: what happened to a step whose outcome is unknown."""

    outcome: Literal["succeeded", "failed"] = Field(
        description="What an operator found: the step's effect happened, or it did not."
    )
    comment: str = Field(default="", max_length=MAX_COMMENT)


class ApproveBody(_In):
    """Body of approve: a comment and, when the policy asks for step-up, a TOTP code."""

    comment: str = Field(default="", max_length=MAX_COMMENT)
    otp: str | None = Field(default=None, max_length=16, description="Step-up code (TOTP).")


class ActorIn(_In):
    """Who proposes the plan (``agent_id`` must be the caller's name)."""

    type: str = Field(default="agent", min_length=1, max_length=2000)
    name: str = Field(min_length=1, max_length=2000)
    model_version: str = Field(min_length=1, max_length=2000)
    agent_id: str = Field(pattern=ID_PATTERN)


class StepIn(_In):
    """One action with literal params (validated against the action's JSON Schema)."""

    id: str | None = Field(default=None, pattern=ID_PATTERN)
    action: str = Field(min_length=1, max_length=200)
    params: dict[str, Any] = Field(default_factory=dict)


class SignatureIn(_In):
    """An Ed25519 signature over the canonical manifest without ``signature``."""

    key_id: str = Field(min_length=1, max_length=200)
    value: str = Field(min_length=1, max_length=200)


class PlanManifest(_In):
    """A plan manifest (docs/concepts.md); see ``proctor.core.plans.Plan.from_dict``."""

    plan_id: str | None = Field(default=None, pattern=ID_PATTERN)
    actor: ActorIn
    on_behalf_of: str = Field(pattern=PERSON_PATTERN)
    intent: str = Field(min_length=1, max_length=8000)
    reasoning: str = Field(default="", max_length=8000)
    steps: list[StepIn] = Field(min_length=1, max_length=32)
    signature: SignatureIn | None = None


# --------------------------------------------------------------------------- plans


class AssessmentOut(_Out):
    """The five-axis assessment."""

    scores: dict[str, int]
    total: int
    pattern: str
    reasons: list[str]


class StepOut(_Out):
    """A step's state."""

    id: str
    action: str
    outcome: str
    status: str
    result: Any = Field(description="What the handler returned (JSON).")
    error: str | None
    simulation: Any = Field(description="Predicted effects of the dry run, or null.")
    undo_until: str | None


class ApprovalOut(_Out):
    """A confirmation, approval or rejection."""

    principal: str
    kind: Literal["confirm", "approve", "reject"]
    roles: list[str]
    comment: str
    at: str


class StepQuorumOut(_Out):
    """One approving step's own quorum, and who has counted towards it so far."""

    step_id: str
    approvals_required: int
    approver_roles: list[str] = Field(description="Each approver holds one; together all.")
    approved_by: list[str]
    met: bool


class PlanOut(_Out):
    """A plan: exactly ``proctor.cli.render.plan_json`` (and ``proctor show --json``)."""

    plan_id: str
    status: PlanStatus
    outcome: Literal["execute", "confirm", "approve", "deny"]
    digest: str
    policy_version: str
    agent_id: str
    on_behalf_of: str
    created_at: str
    expires_at: str | None
    assessment: AssessmentOut
    reasons: list[str]
    approvals_required: int = Field(description="The largest of `step_quorums`' counts.")
    approver_roles: list[str] = Field(description="The union of `step_quorums`' roles.")
    step_quorums: list[StepQuorumOut] = Field(
        description="Each approving step's quorum: the plan runs when every one is met."
    )
    confirmation_required: bool = Field(
        description="Its on-behalf-of user confirms it (first, when approvers decide too)."
    )
    step_up: bool
    dry_run: bool
    sandbox: bool
    review: bool
    error: str | None
    steps: list[StepOut]
    approvals: list[ApprovalOut]


class PlanList(_Out):
    """A page of plans, newest first."""

    plans: list[PlanOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


# --------------------------------------------------------------------------- audit


class AuditEventList(_Out):
    """A page of audit events (each exactly as signed, parsed)."""

    events: list[dict[str, Any]]
    next_after: int | None = Field(description="Pass as `after` for the next page.")


class InclusionProof(_Out):
    """An RFC 9162 inclusion proof (hashes in standard base64)."""

    index: int
    tree_size: int
    leaf_hash: str
    hashes: list[str]
    root_hash: str


class ConsistencyProof(BaseModel):
    """An RFC 9162 consistency proof (hashes in standard base64)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: int = Field(alias="from")
    to: int
    hashes: list[str]
    from_root: str
    to_root: str


class KeyOut(_Out):
    """A signing key."""

    key_id: str
    public_key: str = Field(description="Base64 of the raw public key.")
    created_at: str | None
    not_after: str | None
    current: bool


class KeysOut(_Out):
    """The log's origin, its signed-note verifier keys and its signing keys."""

    origin: str
    vkeys: list[str]
    keys: list[KeyOut]


class DeliveryOut(_Out):
    """A webhook delivery."""

    delivery_id: str
    event: str
    target: str
    payload: str
    created_at: str
    next_at: str
    attempts: int
    status: str
    last_error: str | None


class DeadLetters(_Out):
    """Webhook deliveries that gave up."""

    deliveries: list[DeliveryOut]


class Health(_Out):
    """Liveness or readiness."""

    status: Literal["ok", "ready"]


class WhoAmI(_Out):
    """The caller as the server authenticated it (``GET /v1/me``)."""

    name: str = Field(description="The principal's name (a token's name, a JWT's subject).")
    roles: list[str]
    groups: list[str] = Field(description="Its approver groups (approval roles).")
