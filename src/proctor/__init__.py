"""Proctor: a hybrid supervisor for AI-agent actions.

An agent submits a plan; Proctor validates it, scores it on five axes, asks a Rego policy,
dry-runs it, routes it (execute, confirm, approve, deny), executes it with compensation and
undo, and records every step in a signed, hash-chained audit log.
"""

from proctor._library import Proctor
from proctor.app.gateway import Gateway, GatewayOptions
from proctor.audit.events import VerifyReport
from proctor.core.assessment import Assessment, Pattern, Scores, Thresholds
from proctor.core.catalog import ActionSpec, Catalog
from proctor.core.decisions import Decision, Outcome, StepDecision
from proctor.core.lifecycle import PlanRecord, PlanStatus, StepRecord, StepStatus
from proctor.core.plans import Plan
from proctor.core.ports import ToolCall
from proctor.errors import (
    ApprovalExpiredError,
    AuditIntegrityError,
    ConfigError,
    ConflictError,
    InvalidPolicyError,
    InvalidRequestError,
    InvalidTransitionError,
    NotFoundError,
    PermissionDeniedError,
    PlanIdReusedError,
    PolicyEngineError,
    ProctorError,
    RateLimitedError,
    SignatureError,
    StorageError,
)

__all__ = [
    "ActionSpec",
    "ApprovalExpiredError",
    "Assessment",
    "AuditIntegrityError",
    "Catalog",
    "ConfigError",
    "ConflictError",
    "Decision",
    "Gateway",
    "GatewayOptions",
    "InvalidPolicyError",
    "InvalidRequestError",
    "InvalidTransitionError",
    "NotFoundError",
    "Outcome",
    "Pattern",
    "PermissionDeniedError",
    "Plan",
    "PlanIdReusedError",
    "PlanRecord",
    "PlanStatus",
    "PolicyEngineError",
    "Proctor",
    "ProctorError",
    "RateLimitedError",
    "Scores",
    "SignatureError",
    "StepDecision",
    "StepRecord",
    "StepStatus",
    "StorageError",
    "Thresholds",
    "ToolCall",
    "VerifyReport",
]
