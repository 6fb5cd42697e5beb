"""How Proctor's errors reach an MCP client (the MCP adapter's mapping table).

A ``tools/call`` that Proctor refuses is a *tool error* (``isError: true``) whose text names
the code, the field and the hint, because the model can read and correct it (MCP
2025-11-25 asks servers to report invalid arguments this way). A call to a tool that does
not exist is a protocol error (``-32602``), as the specification says. Anything that is not
a ``ProctorError`` is reported without internals.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import mcp_types as types

from proctor.errors import ProctorError

__all__ = ["TOOL_ERROR_PREFIX", "tool_error", "tool_error_text"]

TOOL_ERROR_PREFIX: Mapping[str, str] = MappingProxyType(
    {
        "invalid_request": "refused: invalid call",
        "bad_signature": "refused: bad signature",
        "plan_id_reused": "refused: conflicting retry",
        "not_found": "refused: not found",
        "permission_denied": "refused: not allowed",
        "conflict": "refused: conflict",
        "invalid_transition": "refused: conflict",
        "approval_expired": "refused: the approval expired",
        "policy_engine_error": "denied: the policy could not be evaluated",
        "config_error": "refused: configuration error",
        "storage_error": "failed: storage error",
        "missing_dependency": "failed: missing dependency",
    }
)
"""Error code -> the first words of the tool error the client reads."""


def tool_error_text(exc: BaseException) -> str:
    """Return the message a client reads for ``exc``."""
    if not isinstance(exc, ProctorError):
        return f"failed: internal error ({type(exc).__name__})"
    prefix = TOOL_ERROR_PREFIX.get(exc.code, f"refused: {exc.code}")
    text = f"{prefix}: {exc.message}"
    if exc.field:
        text += f" (field: {exc.field})"
    if exc.hint:
        text += f" {exc.hint}"
    return text


def tool_error(message: str) -> types.CallToolResult:
    """Return a tool error result carrying ``message``."""
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=message)], is_error=True
    )
