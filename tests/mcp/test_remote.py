"""``proctor mcp --server URL --token T``: governed through a real ``proctor serve``.

The server (a subprocess on 127.0.0.1, the example MCP catalog and policy) holds the plans,
approvals and audit log; the proxy (a subprocess driven by the SDK's client over stdio)
holds the npm upstream servers, forwards what the server lets run, and reports each outcome
(``/v1/mcp``, ``proctor.http.routes_mcp``). When the server cannot be reached, calls fail
closed: a tool error, nothing forwarded.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

from proctor.testing import wait_until_serving

pytestmark = [pytest.mark.slow, pytest.mark.cli, pytest.mark.server, pytest.mark.timeout(600)]

FLAKY = Path(__file__).parent / "servers" / "flaky.py"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


@dataclass(frozen=True)
class Served:
    home: Path
    url: str
    tokens: dict[str, str]


@pytest.fixture
def served(cli, proctor_exe, home, kit, spawn) -> Served:
    """The example MCP home served over HTTP: the agent's token, its user's, an approver's."""
    tokens = {}
    people = (("desk", ["agent"], ""), ("una", ["user"], ""), ("olga", ["approver"], "ops"))
    for name, roles, groups in people:
        args = ["tokens", "create", "--name", name, "--json"]
        for role in roles:
            args += ["--role", role]
        if groups:
            args += ["--groups", groups]
        made = cli(*args, home=home)
        assert made.code == 0, made.err
        tokens[name] = made.json()["token"]
    config = home / "config.toml"
    # The server's step timeout bounds the proxy's upstream calls (a hung tool fails fast).
    config.write_text(
        config.read_text().replace("step_timeout_seconds = 60", "step_timeout_seconds = 4")
    )
    port = kit.free_port()
    argv = [proctor_exe, "serve", "--home", str(home), "--port", str(port), "--no-access-log"]
    server = spawn(argv)
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(url, proc=server)
    return Served(home, url, tokens)


@pytest.fixture
def config(home, roots, npm_servers, kit) -> Path:
    return kit.write_config(
        home,
        "remote.json",
        {
            "fs": {
                "command": "node",
                "args": [str(npm_servers.filesystem), str(roots)],
                # The file's text never leaves the proxy: the server's log keeps a hash.
                "proctor": {"maskResult": ["/content", "/structuredContent"]},
            },
            "flaky": {"command": sys.executable, "args": [str(FLAKY)]},
        },
    )


def remote_proxy(
    exe: str,
    s: Served,
    config: Path,
    kit,
    *extra: str,
    env_only: bool = False,
    user_token: bool = True,
) -> StdioServerParameters:
    """The proxy of agent ``desk`` for user ``una``, with una's token unless told not to."""
    args = ["mcp", "--config", str(config), "--agent", "desk", "--user", "una", *extra]
    if env_only:
        env = kit.clean_env(PROCTOR_SERVER=s.url, PROCTOR_TOKEN=s.tokens["desk"])
        if user_token:
            env["PROCTOR_USER_TOKEN"] = s.tokens["una"]
    else:
        args += ["--server", s.url, "--token", s.tokens["desk"]]
        if user_token:
            args += ["--user-token", s.tokens["una"]]
        env = kit.clean_env()
    return StdioServerParameters(command=exe, args=args, env=env)


def plan_events(cli, s: Served, plan_id: str) -> list[dict]:
    return [e for e in events_of(cli, s) if e.get("plan_id") == plan_id]


def events_of(cli, s: Served) -> list[dict]:
    r = cli("audit", "events", "--json", "--limit", "10000", home=s.home)
    assert r.code == 0, r.err
    return list(r.json()["events"])


def plan_id_of(cli, s: Served, action: str) -> list[str]:
    """The ids of the plans of ``action``, oldest first."""
    return [
        e["plan_id"]
        for e in events_of(cli, s)
        if e["type"] == "step.started" and e["actions_attempted"][0]["api"] == action
    ]


def test_calls_are_decided_by_the_server_and_their_outcomes_recorded_there(
    cli, proctor_exe, served, roots, config, kit
):
    """Allowed, denied, refused, failing and confirmed calls: the server's log has each."""
    answers = iter(["accept", "decline"])
    asked: list[str] = []

    async def elicit(context, params):
        asked.append(params.message)
        return types.ElicitResult(action=next(answers), content={})

    async def go():
        async with (
            stdio_client(remote_proxy(proctor_exe, served, config, kit)) as (r, w),
            ClientSession(r, w, elicitation_callback=elicit) as s,
        ):
            await s.initialize()
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert {"read_text_file", "write_file", "ok", "fail"} <= set(tools)
            assert tools["read_text_file"].annotations.read_only_hint is True
            read = await s.call_tool(
                "read_text_file", {"path": str(roots / "notes.txt")}, meta={"traceparent": TRACE}
            )
            assert not read.is_error, text(read)
            assert "hello from the allowed root" in text(read)  # the client's copy is whole
            evil = await s.call_tool(
                "write_file", {"path": "/tmp/proctor-evil.txt", "content": "x"}
            )
            assert evil.is_error and "denied by policy" in text(evil)
            assert "a path outside the allowed roots" in text(evil)
            bad = await s.call_tool("read_text_file", {"pathh": "x"})
            assert bad.is_error and "refused: invalid call" in text(bad), text(bad)
            fail = await s.call_tool("fail", {})
            assert fail.is_error and "kaput" in text(fail)
            t0 = time.monotonic()
            hung = await s.call_tool("hang", {})
            assert hung.is_error and "TimeoutError" in text(hung), text(hung)
            assert time.monotonic() - t0 < 30
            with anyio.move_on_after(1):  # the client cancels: the upstream call and the step
                await s.call_tool("hang", {"n": 1})
            yes = await s.call_tool("write_file", {"path": str(roots / "yes.txt"), "content": "y"})
            assert not yes.is_error, text(yes)
            no = await s.call_tool("write_file", {"path": str(roots / "no.txt"), "content": "n"})
            assert no.is_error and "rejected" in text(no), text(no)
            with pytest.raises(MCPError) as unknown:
                await s.call_tool("no_such_tool", {})
            assert unknown.value.code == types.INVALID_PARAMS
            ok = await s.call_tool("ok", {})  # the proxy is still up and governing
            assert not ok.is_error and "fine" in text(ok)

    anyio.run(go)
    deadline = time.monotonic() + 30
    while not any(
        e["type"] == "step.failed" and "cancelled by the client" in json.dumps(e["data"])
        for e in events_of(cli, served)
    ):  # the cancellation reaches the proxy after the client moved on
        assert time.monotonic() < deadline, "the cancelled call was not recorded"
        time.sleep(0.5)
    assert not Path("/tmp/proctor-evil.txt").exists()
    assert (roots / "yes.txt").read_text() == "y"
    assert not (roots / "no.txt").exists()
    assert asked and f"Write {roots / 'yes.txt'}" in asked[0]  # the action's plain summary
    log = events_of(cli, served)
    (read_plan,) = plan_id_of(cli, served, "mcp.fs.read_text_file")
    kinds = [e["type"] for e in log if e.get("plan_id") == read_plan]
    assert kinds[0] == "plan.submitted" and "policy.decided" in kinds
    assert kinds[-3:] == ["step.started", "step.succeeded", "plan.finished"], kinds
    # The call's trace reaches the server with the call and with its outcome report.
    assert {e["trace_id"] for e in log if e.get("plan_id") == read_plan} == {TRACE_ID}
    done = next(e for e in log if e.get("plan_id") == read_plan and e["type"] == "step.succeeded")
    assert "hello from the allowed root" not in json.dumps(log)  # masked by the proxy
    # No hash of the unmasked result: the remote proxy has no instance key to make it keyed,
    # and a plain one would let a reader test guesses of a short masked value.
    assert "unmasked_hmac_sha256" not in done["data"]["result"]
    assert "unmasked_sha256" not in done["data"]["result"]
    failed = [e for e in log if e["type"] == "step.failed"]
    assert any("kaput" in json.dumps(e["data"]) for e in failed)
    assert any("TimeoutError" in json.dumps(e["data"]) for e in failed)
    denied = [e for e in log if e["type"] == "plan.routed" and e["data"]["status"] == "denied"]
    assert len(denied) == 1
    rejected = [json.dumps(e) for e in log if e["type"] == "plan.rejected"]
    assert any("steps[0].params" in r and "path" in r for r in rejected)  # the bad arguments
    assert any("not-listed.no_such_tool" in r for r in rejected)
    assert [e["type"] for e in log].count("confirmation.granted") == 1
    # The user's own token answered the form, never the agent's.
    answers = [e for e in log if e["type"] in ("confirmation.granted", "approval.rejected")]
    assert {e["data"]["principal"] for e in answers} == {"una"}, answers
    actors = {e["actor"]["name"] for e in log if e["type"] == "plan.submitted"}
    assert actors and all(a.startswith("desk via ") for a in actors)
    assert cli("audit", "verify", home=served.home).code == 0


def test_a_cancelled_call_does_not_cancel_an_identical_one_that_shares_its_forward(
    cli, proctor_exe, served, kit
):
    """Two identical calls at once share one plan and one forward; the client cancels the
    first: the second still gets the upstream's result, and the server records a success.

    Regression: the forward ran in the first request's task, so its cancellation reported
    "cancelled by the client" for the plan, and the second caller got a tool error.
    """
    config = kit.write_config(
        served.home,
        "slow.json",
        {
            "flaky": {
                "command": sys.executable,
                "args": [str(FLAKY)],
                "env": {"FLAKY_EXTRA": "slow"},
            }
        },
    )

    async def go():
        async with (
            stdio_client(remote_proxy(proctor_exe, served, config, kit)) as (r, w),
            ClientSession(r, w) as s,
        ):
            await s.initialize()
            out: dict[str, types.CallToolResult] = {}
            seen: list[float] = []  # the second's progress

            async def ignored(value: float, total: float | None, message: str | None) -> None:
                pass

            async def got(value: float, total: float | None, message: str | None) -> None:
                seen.append(value)

            async def first() -> None:
                with anyio.move_on_after(1.2):
                    out["first"] = await s.call_tool("slow", {"n": 25}, progress_callback=ignored)

            async def second() -> None:
                await anyio.sleep(0.4)
                out["second"] = await s.call_tool("slow", {"n": 25}, progress_callback=got)

            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                tg.start_soon(second)
            return out, seen

    out, seen = anyio.run(go)

    assert "first" not in out
    second = out["second"]
    assert not second.is_error, text(second)
    assert text(second) == "slow done"
    assert second.structured_content == {"ratio": 0.25, "big": 1.5e300, "tenths": 25}
    assert seen and seen[-1] == 25  # the shared call's progress, to its end
    (plan_id,) = plan_id_of(cli, served, "mcp.flaky.slow")  # one plan, one forward
    kinds = [e["type"] for e in plan_events(cli, served, plan_id)]
    assert kinds[-3:] == ["step.started", "step.succeeded", "plan.finished"], kinds


def test_an_approval_given_remotely_lets_the_retry_run_once(
    cli, proctor_exe, served, roots, config, kit
):
    """A pending call is approved with `proctor approve --server`; the retry runs it once."""
    params = {"source": str(roots / "notes.txt"), "destination": str(roots / "moved.txt")}

    async def call(env_only: bool = False):
        where = remote_proxy(proctor_exe, served, config, kit, env_only=env_only)
        async with stdio_client(where) as (r, w), ClientSession(r, w) as s:
            await s.initialize()
            return await s.call_tool("move_file", params)

    first = anyio.run(call)
    assert first.is_error and "pending approval mcp-" in text(first), text(first)
    assert f"--server {served.url}" in text(first)
    plan_id = text(first).split("pending approval ")[1].split(":")[0]
    assert (roots / "notes.txt").exists()
    r = cli("approve", plan_id, "--server", served.url, "--token", served.tokens["olga"], "--json")
    assert r.code == 0 and r.json()["status"] == "running", r.out + r.err  # queued for a proxy
    done = anyio.run(call, True)  # through PROCTOR_SERVER / PROCTOR_TOKEN this time
    assert not done.is_error, text(done)
    assert (roots / "moved.txt").exists() and not (roots / "notes.txt").exists()
    mine = [e["type"] for e in plan_events(cli, served, plan_id)]
    assert mine.count("plan.submitted") == 1 and "approval.granted" in mine
    assert mine.count("step.started") == 1 and mine.count("step.succeeded") == 1
    assert mine[-1] == "plan.finished"


def test_a_big_result_reaches_the_client_whole_and_the_log_as_its_hash(
    cli, proctor_exe, served, roots, npm_servers, kit
):
    """A result beyond the log's 64 KiB is reported as its size and hash (a body that fits)."""
    big = roots / "big.txt"
    big.write_text("x" * 300_000)
    config = kit.write_config(
        served.home,
        "plain.json",
        {"fs": {"command": "node", "args": [str(npm_servers.filesystem), str(roots)]}},
    )

    async def go():
        async with (
            stdio_client(remote_proxy(proctor_exe, served, config, kit)) as (r, w),
            ClientSession(r, w) as s,
        ):
            await s.initialize()
            return await s.call_tool("read_text_file", {"path": str(big)})

    read = anyio.run(go)
    assert not read.is_error and text(read).count("x") >= 300_000
    (plan_id,) = plan_id_of(cli, served, "mcp.fs.read_text_file")
    done = next(e for e in plan_events(cli, served, plan_id) if e["type"] == "step.succeeded")
    assert done["data"]["result"]["truncated"] is True
    assert done["data"]["result"]["bytes"] > 300_000 and done["data"]["result"]["sha256"]


def test_an_unreachable_server_fails_closed_and_forwards_nothing(
    cli, proctor_exe, served, roots, config, kit
):
    """With nothing listening at --server, every call is a tool error and nothing runs."""
    dead = Served(served.home, f"http://127.0.0.1:{kit.free_port()}", served.tokens)
    target = roots / "made-while-down"

    async def go():
        async with (
            stdio_client(remote_proxy(proctor_exe, dead, config, kit)) as (r, w),
            ClientSession(r, w) as s,
        ):
            await s.initialize()
            names = {t.name for t in (await s.list_tools()).tools}
            assert "create_directory" in names  # listing is no permission: calls decide
            for _ in range(2):  # the proxy stays up and keeps refusing
                made = await s.call_tool("create_directory", {"path": str(target)})
                assert made.is_error and "failed closed" in text(made), text(made)
                assert "not forwarded" in text(made)

    anyio.run(go)
    assert not target.exists()
    assert not plan_id_of(cli, served, "mcp.fs.create_directory")
    # Usage errors, as for the other commands with --server: exit 2 naming the option.
    bad = cli("mcp", "--config", config, "--server", "ftp://x")
    assert bad.code == 2 and "--server" in bad.err
    both = cli("mcp", "--config", config, "--server", served.url, home=served.home)
    assert both.code == 2 and "not both" in both.err


def test_the_outcome_route_refuses_other_agents_and_non_mcp_plans(served, cli):
    """Only the plan's agent reports an outcome, and only for a queued MCP plan."""
    headers = {"Authorization": f"Bearer {served.tokens['desk']}"}
    made = cli(
        "tokens", "create", "--name", "mallory", "--role", "agent", "--json", home=served.home
    )
    other = {"Authorization": f"Bearer {made.json()['token']}"}
    tool = {"name": "create_directory", "inputSchema": {"type": "object"}}
    body = {
        "agent_id": "desk",
        "client": "test 1",
        "on_behalf_of": "una",
        "server": "fs",
        "tool": tool,
        "arguments": {"path": "/nowhere/outside"},
    }
    with httpx.Client(base_url=served.url, timeout=10) as http:
        denied = http.post("/v1/mcp/calls", json=body, headers=headers)
        assert denied.status_code == 201 and denied.json()["status"] == "denied"
        as_other = http.post("/v1/mcp/calls", json={**body, "agent_id": "mallory"}, headers=headers)
        assert as_other.status_code == 403
        plan_id = denied.json()["plan_id"]
        report = {"step_id": "s1", "result": {"content": []}}
        foreign = http.post(f"/v1/mcp/plans/{plan_id}/outcome", json=report, headers=other)
        assert foreign.status_code == 404  # another agent's plan: as if there were none
        late = http.post(f"/v1/mcp/plans/{plan_id}/outcome", json=report, headers=headers)
        assert late.status_code == 409 and "denied" in late.json()["message"]
        both = http.post(
            f"/v1/mcp/plans/{plan_id}/outcome", json={**report, "error": "x"}, headers=headers
        )
        assert both.status_code == 422
        listed = http.post(
            "/v1/mcp/tools",
            json={"agent_id": "desk", "tools": [{"server": "fs", "tool": tool}]},
            headers=headers,
        )
        assert listed.status_code == 200 and listed.json() == {"hidden": []}
        for_other = http.post(
            "/v1/mcp/tools",
            json={"agent_id": "desk", "tools": [{"server": "fs", "tool": tool}]},
            headers=other,
        )
        assert for_other.status_code == 403


def test_without_a_user_token_the_proxy_does_not_confirm_for_the_user(
    cli, proctor_exe, served, roots, config, kit
):
    """No --user-token: no form, "needs confirmation", nothing confirmed or written; the
    user's own confirmation (her token) then lets the retry run once.

    Regression: the proxy confirmed what the client's form accepted with the agent's own
    token (agent and user roles on one name), so the agent confirmed its own plans.
    """
    asked: list[str] = []
    target = roots / "asked.txt"

    async def elicit(context, params):
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={})

    async def call():
        where = remote_proxy(proctor_exe, served, config, kit, user_token=False)
        async with (
            stdio_client(where) as (r, w),
            ClientSession(r, w, elicitation_callback=elicit) as s,
        ):
            await s.initialize()
            return await s.call_tool("write_file", {"path": str(target), "content": "y"})

    first = anyio.run(call)

    assert first.is_error and "needs confirmation mcp-" in text(first), text(first)
    assert "proctor confirm mcp-" in text(first) and f"--server {served.url}" in text(first)
    assert asked == []  # not asked: an "allow" it could not relay would mislead
    assert not target.exists()
    plan_id = text(first).split("needs confirmation ")[1].split(":")[0]
    kinds = [e["type"] for e in plan_events(cli, served, plan_id)]
    assert "confirmation.granted" not in kinds and "step.started" not in kinds
    # The agent's token cannot confirm it either (not the user); the user's can.
    as_agent = cli("confirm", plan_id, "--server", served.url, "--token", served.tokens["desk"])
    assert as_agent.code != 0
    r = cli("confirm", plan_id, "--server", served.url, "--token", served.tokens["una"], "--json")
    assert r.code == 0 and r.json()["status"] == "running", r.out + r.err  # queued for a proxy
    done = anyio.run(call)
    assert not done.is_error, text(done)
    assert target.read_text() == "y" and asked == []
    mine = [e["type"] for e in plan_events(cli, served, plan_id)]
    assert mine.count("confirmation.granted") == 1 and mine.count("step.started") == 1


def test_the_user_token_and_user_are_checked_at_startup(cli, served, config):
    """A --user-token of someone else, or --user the agent itself: the proxy does not start."""
    base = ["mcp", "--config", config, "--server", served.url, "--token", served.tokens["desk"]]

    other = cli(*base, "--agent", "desk", "--user", "una", "--user-token", served.tokens["olga"])
    bogus = cli(*base, "--agent", "desk", "--user", "una", "--user-token", "prt_" + "x" * 43)
    itself = cli(*base, "--agent", "desk", "--user", "Desk")
    local = cli("mcp", "--config", config, "--user-token", "x", home=served.home)

    assert other.code == 1 and "--user-token is 'olga'" in other.err, other.err
    assert "not the user 'una'" in other.err
    assert bogus.code == 1 and "--user-token was refused" in bogus.err, bogus.err
    assert itself.code == 2 and "--user" in itself.err and "--agent" in itself.err, itself.err
    assert local.code == 2 and "--user-token" in local.err and "--server" in local.err
