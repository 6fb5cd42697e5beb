"""An upstream that fails, hangs, crashes or sends malformed messages; a client's bad calls.

Each gives the client a clear error, leaves the proxy up, and is audited.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

# The first test installs the npm servers (npm ci, once per lock file) in its setup.
pytestmark = [pytest.mark.slow, pytest.mark.cli, pytest.mark.timeout(600)]

FLAKY = Path(__file__).parent / "servers" / "flaky.py"


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def test_an_upstream_that_fails_hangs_crashes_and_lies(cli, proctor_exe, home, kit):
    """Failures become tool errors and failed steps; a crashed upstream is restarted."""
    cfg = (
        (home / "config.toml")
        .read_text()
        .replace("step_timeout_seconds = 60", "step_timeout_seconds = 3")
    )
    (home / "config.toml").write_text(cfg)
    config = kit.write_config(
        home, "flaky.json", {"flaky": {"command": sys.executable, "args": [str(FLAKY)]}}
    )
    params = StdioServerParameters(
        command=proctor_exe,
        args=["mcp", "--config", str(config), "--home", str(home)],
        env=kit.clean_env(),
    )

    async def go():
        async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
            await s.initialize()
            first = await s.call_tool("ok", {})
            assert not first.is_error
            with anyio.move_on_after(1):  # the client cancels: so does the upstream call
                await s.call_tool("hang", {"n": 1})
            numbers = await s.call_tool("numbers", {})
            assert numbers.structured_content == {"ratio": 0.25, "big": 1.5e300, "n": 3}
            failed = await s.call_tool("fail", {})
            assert failed.is_error and text(failed) == "kaput"  # the upstream's own error
            t0 = time.monotonic()
            hung = await s.call_tool("hang", {})
            assert hung.is_error and "TimeoutError" in text(hung)
            assert time.monotonic() - t0 < 60
            garbage = await s.call_tool("garbage", {})
            assert not garbage.is_error and "fine after garbage" in text(garbage)
            malformed = await s.call_tool("malformed", {})
            assert malformed.is_error, text(malformed)
            crashed = await s.call_tool("crash", {})
            assert crashed.is_error and "closed the connection" in text(crashed)
            with anyio.fail_after(60):  # the proxy restarts the upstream for the next call
                while True:
                    after = await s.call_tool("ok", {})
                    if not after.is_error:
                        break
                    await anyio.sleep(0.5)
            assert text(after) != text(first)  # another process answered
            bad = await s.call_tool("ok", {"n": "not a number"})
            assert bad.is_error and "refused: invalid call" in text(bad)
            assert "params.n" in text(bad)
            extra = await s.call_tool("ok", {"unexpected": 1})
            assert extra.is_error and "refused" in text(extra)

    anyio.run(go)
    log = kit.events(cli, home)
    failed = [json.dumps(e["data"]) for e in log if e["type"] == "step.failed"]
    assert any("kaput" in f for f in failed)
    assert any("TimeoutError" in f for f in failed)
    assert any("closed the connection" in f for f in failed)
    assert any("cancelled by the client" in f for f in failed)
    assert len(failed) >= 5  # cancelled, fail, hang (timed out), malformed, crash
    rejected = [e for e in log if e["type"] == "plan.rejected"]
    assert len(rejected) == 2  # the two calls with bad arguments, never forwarded
    assert cli("audit", "verify", home=home).code == 0


def test_bad_configs_exit_non_zero_with_the_field(cli, home, kit, tmp_path):
    """A broken mcpServers file or an upstream that cannot start: exit 1 naming the server."""
    broken = kit.write_config(home, "broken.json", {"x": {"command": "node", "url": "http://a"}})
    r = cli("mcp", "--config", broken, home=home)
    assert r.code == 1 and "mcpServers.x" in r.err
    missing = kit.write_config(home, "missing.json", {"gone": {"command": str(tmp_path / "nope")}})
    r = cli("mcp", "--config", missing, home=home)
    assert r.code == 1 and "mcpServers.gone" in r.err and "did not start" in r.err
    r = cli("mcp", "--config", tmp_path / "absent.json", home=home)
    assert r.code == 2
    r = cli("mcp", "--config", missing, "--http", "nonsense", home=home)
    assert r.code == 2
