"""Governing an agent's tool calls from where the agent is built.

``governed`` (``proctor.integrations.decorator``) turns any Python function into a governed
tool with one line. Framework adapters (LangGraph, OpenAI Agents SDK, pydantic-ai) are not
built yet.
"""

from proctor.integrations.decorator import ApprovalPending, ToolDenied, ToolFailed, governed

__all__ = ["ApprovalPending", "ToolDenied", "ToolFailed", "governed"]
