"""The Proctor exception tree.

Every error Proctor raises on purpose is a ``ProctorError``. Each carries a stable ``code``
that clients can rely on, an optional ``field`` naming the part of the input at fault, and a
``hint`` that says what to do next::

    ProctorError                      code
     ├── ConfigError                  config_error
     ├── InvalidPolicyError           invalid_policy
     ├── PolicyEngineError            policy_engine_error
     ├── InvalidRequestError          invalid_request
     │    └── SignatureError          bad_signature
     ├── NotFoundError                not_found
     ├── PermissionDeniedError        permission_denied
     ├── RateLimitedError             rate_limited
     ├── ConflictError                conflict
     │    ├── InvalidTransitionError  invalid_transition
     │    ├── ApprovalExpiredError    approval_expired
     │    └── PlanIdReusedError       plan_id_reused
     ├── RetryableError               retryable (raised by tools: a transient failure)
     ├── StorageError                 storage_error
     ├── AuditIntegrityError          audit_integrity
     └── MissingDependencyError       missing_dependency

A *decision* (deny, approve, ...) is never an exception: it is the product of the gateway and
is persisted and audited. Exceptions mean the request could not be processed at all.

This module imports nothing else from Proctor, so every layer can import it.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ApprovalExpiredError",
    "AuditIntegrityError",
    "ConfigError",
    "ConflictError",
    "InvalidPolicyError",
    "InvalidRequestError",
    "InvalidTransitionError",
    "MissingDependencyError",
    "NotFoundError",
    "PermissionDeniedError",
    "PlanIdReusedError",
    "PolicyEngineError",
    "ProctorError",
    "RateLimitedError",
    "RetryableError",
    "SignatureError",
    "StorageError",
]


class ProctorError(Exception):
    """Base class of every error Proctor raises on purpose.

    Args:
        message: What went wrong, in one sentence.
        field: The input field at fault (a dotted path such as ``steps[0].params.amount``).
        hint: What the user can do next.
        **details: Structured context, kept for machine output.
    """

    code: ClassVar[str] = "proctor_error"

    def __init__(
        self, message: str, *, field: str | None = None, hint: str | None = None, **details: Any
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.hint = hint
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """Return the error as the JSON object the CLI and HTTP API print."""
        out: dict[str, Any] = {"code": self.code, "message": self.message, "field": self.field}
        if self.hint:
            out["hint"] = self.hint
        return out

    def diagnostics(self) -> str:
        """Return a multi-line explanation for humans: message, field, hint and cause."""
        lines = [f"error[{self.code}]: {self.message}"]
        if self.field:
            lines.append(f"  field: {self.field}")
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        if self.__cause__ is not None:
            lines.append(f"  caused by: {type(self.__cause__).__name__}: {self.__cause__}")
        return "\n".join(lines)


class ConfigError(ProctorError):
    """The configuration or the instance home is missing, unreadable or invalid."""

    code = "config_error"


class InvalidPolicyError(ProctorError):
    """A policy bundle does not parse or does not build."""

    code = "invalid_policy"


class PolicyEngineError(ProctorError):
    """The policy engine failed while evaluating; callers must treat this as deny."""

    code = "policy_engine_error"


class InvalidRequestError(ProctorError):
    """The input (a plan, a scenario, a request) breaks a rule; ``field`` names where."""

    code = "invalid_request"


class SignatureError(InvalidRequestError):
    """An agent's manifest signature is missing, malformed or does not verify."""

    code = "bad_signature"


class NotFoundError(ProctorError):
    """The plan, event or key asked for does not exist."""

    code = "not_found"


class PermissionDeniedError(ProctorError):
    """The principal may not do this (wrong role, self-approval, not the on-behalf-of user)."""

    code = "permission_denied"


class RateLimitedError(ProctorError):
    """Too many failed attempts: refused until ``details["retry_after"]`` seconds pass.

    Raised for failed authentications from one client address (the HTTP API) and for wrong
    step-up codes of one approver (``approve``); the right credentials or code are refused
    too until then.
    """

    code = "rate_limited"


class ConflictError(ProctorError):
    """The request conflicts with the current state."""

    code = "conflict"


class InvalidTransitionError(ConflictError):
    """The plan or step is not in a state that allows this transition."""

    code = "invalid_transition"


class ApprovalExpiredError(ConflictError):
    """The approval or confirmation window has closed; the plan is expired."""

    code = "approval_expired"


class PlanIdReusedError(ConflictError):
    """A plan id was submitted again with a different manifest digest."""

    code = "plan_id_reused"


class RetryableError(ProctorError):
    """Raised by a tool for a transient failure that had no effect: the step is retried.

    The gateway retries it with exponential backoff and jitter, under the same idempotency
    key, up to the configured attempts and never past the plan's deadline.
    """

    code = "retryable"


class StorageError(ProctorError):
    """The store failed; driver exceptions are wrapped in this at the adapter boundary."""

    code = "storage_error"


class AuditIntegrityError(ProctorError):
    """The audit log failed verification."""

    code = "audit_integrity"


class MissingDependencyError(ProctorError):
    """An optional dependency is not installed; the message names the extra to install."""

    code = "missing_dependency"
