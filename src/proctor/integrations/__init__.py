"""Governing an agent's tool calls from where the agent is built.

- ``governed`` (``proctor.integrations.decorator``): any Python function, one decorator.
- ``proctor.integrations.langgraph``: a LangGraph ``ToolNode`` (interrupt and resume).
- ``proctor.integrations.openai_agents``: OpenAI Agents SDK function tools
  (``needs_approval``, a tool guardrail, and ``RunState`` approvals from Proctor's record).
- ``proctor.integrations.pydantic_ai``: a pydantic-ai toolset (deferred-tool approvals).

The framework modules import their framework, so they are not imported here: each needs its
extra (``proctor[langgraph]``, ``proctor[openai-agents]``, ``proctor[pydantic-ai]``).
docs/integrations.md has a tutorial for each.
"""

from proctor.integrations._governor import Governor, ToolOutcome
from proctor.integrations.decorator import (
    ApprovalPending,
    ToolDenied,
    ToolFailed,
    governed,
    raise_for_outcome,
)

__all__ = [
    "ApprovalPending",
    "Governor",
    "ToolDenied",
    "ToolFailed",
    "ToolOutcome",
    "governed",
    "raise_for_outcome",
]
