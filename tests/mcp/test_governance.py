"""How the proxy maps tools to actions and calls to plans (in process, no upstream)."""

from __future__ import annotations

import mcp_types as types
import pytest

from proctor import Proctor
from proctor.core.assessment import Scores
from proctor.core.catalog import ActionSpec, Catalog
from proctor.errors import ConfigError
from proctor.mcp import McpProxy, load_config
from proctor.mcp.governance import call_key, current_plan_id, spec_from_annotations
from proctor.tools.mcp import audit_document

LOW = Scores(risk=1, auditability=1, ux=1, recovery=1, cost=1)


class Rec:
    def __init__(self, status):
        self.status = status


class TestCurrentPlanId:
    def test_a_new_call_is_generation_zero(self):
        """A call never seen before gets generation 0."""
        assert current_plan_id("k", lambda pid: None) == "mcp-k-0"

    @pytest.mark.parametrize("done", [1, 2, 5, 37])
    def test_a_waiting_plan_is_reused_and_a_finished_one_is_not(self, done):
        """The latest generation is reused while it waits; after it ends the next one starts."""
        from proctor.core.lifecycle import PlanStatus

        plans = {f"mcp-k-{i}": Rec(PlanStatus.SUCCEEDED) for i in range(done)}
        assert current_plan_id("k", plans.get) == f"mcp-k-{done}"
        plans[f"mcp-k-{done}"] = Rec(PlanStatus.AWAITING_APPROVAL)
        assert current_plan_id("k", plans.get) == f"mcp-k-{done}"
        plans[f"mcp-k-{done}"] = Rec(PlanStatus.DENIED)
        assert current_plan_id("k", plans.get) == f"mcp-k-{done + 1}"

    def test_the_key_depends_on_every_part_of_the_call(self):
        """Agent, client, action and arguments all change the identity; key order does not."""
        base = call_key("a", "c 1", "mcp.fs.x", {"p": 1, "q": 2})
        assert base == call_key("a", "c 1", "mcp.fs.x", {"q": 2, "p": 1})
        assert base != call_key("b", "c 1", "mcp.fs.x", {"p": 1, "q": 2})
        assert base != call_key("a", "c 2", "mcp.fs.x", {"p": 1, "q": 2})
        assert base != call_key("a", "c 1", "mcp.fs.y", {"p": 1, "q": 2})
        assert base != call_key("a", "c 1", "mcp.fs.x", {"p": 1, "q": 3})


def proxy():
    catalog = Catalog(
        [
            ActionSpec(
                name="mcp.fs.write_file",
                summary="Write {path}",
                params_schema={"type": "object"},
                category="general",
                baselines=LOW,
                mask=("/content",),
                runner="mcp",
            )
        ]
    )
    return McpProxy(Proctor.in_memory(catalog=catalog), [])


class TestRegistration:
    def test_declared_entries_survive_a_tools_list_change_and_get_the_tool_schema(self):
        """A declared entry keeps its masks and scores, gains the handler, runner and schema."""
        p = proxy()
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
        }
        tool = types.Tool(name="write_file", input_schema=schema)
        p._register("fs", tool)
        p._register("fs", tool)  # what a tools/list_changed notification does
        spec = p.proctor.gateway.catalog.require("mcp.fs.write_file")
        assert spec.mask == ("/content",) and spec.baselines == LOW
        assert spec.runner == "mcp" and spec.handler == "mcp.fs.write_file:handler"
        assert spec.params_schema["required"] == ["path"]

    def test_undeclared_tools_are_scored_high_from_untrusted_hints(self):
        """Hints never lower a score below the middle; the default total asks approval."""
        liar = types.Tool(
            name="Peek-It",
            input_schema={"type": "object"},
            annotations=types.ToolAnnotations(
                read_only_hint=True, destructive_hint=False, idempotent_hint=True
            ),
        )
        bare = types.Tool(name="zap", input_schema={"type": "object"})
        peek, zap = (
            spec_from_annotations("mcp.o.peek", liar),
            spec_from_annotations("mcp.o.zap", bare),
        )
        assert peek.category == "read" and peek.baselines.risk == 3
        assert zap.category == "general" and zap.baselines.risk == 5 and not zap.idempotent
        assert sum(peek.baselines.as_dict().values()) >= 16
        assert sum(zap.baselines.as_dict().values()) >= 16

    def test_a_second_proxy_wraps_the_python_tools_not_the_first_proxy(self):
        """Re-creating a proxy on the same instance keeps one layer of MCP tools."""
        p = proxy()
        first = p.proctor.gateway.tools
        again = McpProxy(p.proctor, [])
        assert again.mcp_tools.fallback is first.fallback


class TestAuditDocument:
    def test_masks_apply_and_keep_the_keyed_hash_of_the_whole(self):
        """Masked pointers are replaced; the keyed hash of the unmasked result is kept (none
        without a key: a plain hash would let a reader test guesses of the masked value)."""
        result = types.CallToolResult(
            content=[types.TextContent(type="text", text="token=s3cret")],
            structured_content={"token": "s3cret", "ok": True},
        )
        plain = audit_document(result, ())
        pointers = ("/structuredContent/token", "/content")
        masked = audit_document(result, pointers, keyed=lambda doc: f"k:{len(str(doc))}")
        keyless = audit_document(result, pointers)

        assert plain["structuredContent"]["token"] == "s3cret"
        assert "s3cret" not in str(masked)
        assert masked["structuredContent"]["ok"] is True
        assert masked["unmasked_hmac_sha256"] == f"k:{len(str({'result': plain}))}"
        assert "unmasked_hmac_sha256" not in keyless and "unmasked_sha256" not in keyless


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({}, "mcpServers"),
        ({"mcpServers": {"a": {}}}, "mcpServers.a"),
        ({"mcpServers": {"a.b": {"command": "x"}}}, "mcpServers.a.b"),
        ({"mcpServers": {"a": {"command": "x", "url": "http://y"}}}, "mcpServers.a"),
        ({"mcpServers": {"a": {"command": "x", "args": "no"}}}, "mcpServers.a.args"),
        ({"mcpServers": {"a": {"url": "ftp://y"}}}, "mcpServers.a.url"),
        ({"mcpServers": {"a": {"command": "x", "bogus": 1}}}, "mcpServers.a.bogus"),
        (
            {"mcpServers": {"a": {"command": "x", "proctor": {"hide": [1]}}}},
            "mcpServers.a.proctor.hide",
        ),
        (
            {"mcpServers": {"a": {"command": "x", "proctor": {"maskResult": ["nope"]}}}},
            "mcpServers.a.proctor.maskResult",
        ),
    ],
)
def test_bad_configs_name_the_field(doc, field):
    """Each broken mcpServers entry is a ConfigError naming the key at fault."""
    with pytest.raises(ConfigError) as e:
        load_config(doc)
    assert e.value.field == field


def test_a_good_config_reads_every_key():
    """Commands, URLs and the proxy's own options are read as written."""
    ups = load_config(
        {
            "mcpServers": {
                "fs": {"command": "npx", "args": ["-y", "x"], "env": {"A": "1"}},
                "web": {
                    "url": "https://h/mcp",
                    "headers": {"Authorization": "Bearer t"},
                    "proctor": {"namespace": True, "hide": ["rm"], "maskResult": ["/content"]},
                },
            }
        }
    )
    assert ups[0].command == "npx" and ups[0].args == ("-y", "x") and ups[0].env == {"A": "1"}
    assert ups[1].url == "https://h/mcp" and ups[1].namespace and ups[1].hide == {"rm"}
    assert ups[1].mask_result == ("/content",)
