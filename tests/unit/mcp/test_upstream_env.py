"""What an upstream MCP server the proxy starts inherits of the proxy's environment."""

from __future__ import annotations

import pytest

from proctor.mcp import upstream


def test_an_upstream_never_inherits_proctors_credentials(monkeypatch: pytest.MonkeyPatch):
    """The user's token (``--user-token`` read from ``PROCTOR_USER_TOKEN``) and the agent's
    stay with the proxy: an upstream that inherited them would let the agent read the user's
    token through a tool (``printenv``) and confirm its own plans as the user.

    Regression: upstreams were started with ``{**os.environ, ...}``.
    """
    monkeypatch.setenv("PROCTOR_USER_TOKEN", "pt_user_secret")
    monkeypatch.setenv("PROCTOR_TOKEN", "pt_agent_secret")
    monkeypatch.setenv("PROCTOR_SERVER", "http://127.0.0.1:8700")
    monkeypatch.setenv("PATH_FOR_THE_TOOL", "kept")

    env = upstream._inherited_env()

    assert not [k for k in env if k.startswith("PROCTOR_")]
    assert env["PATH_FOR_THE_TOOL"] == "kept"
    assert "pt_user_secret" not in env.values()
