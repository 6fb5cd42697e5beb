"""How the proxy turns upstream tools into catalog actions (no upstream needed)."""

from __future__ import annotations

import mcp_types as types
import pytest

from proctor import Proctor
from proctor.core.assessment import Scores
from proctor.core.catalog import ActionSpec, Catalog
from proctor.errors import ConfigError
from proctor.mcp import McpProxy, load_config

LOW = Scores(risk=1, auditability=1, ux=1, recovery=1, cost=1)


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
            )
        ]
    )
    return McpProxy(Proctor.in_memory(catalog=catalog), [])


def test_declared_entries_survive_a_tools_list_change():
    p = proxy()
    tool = types.Tool(name="write_file", input_schema={"type": "object"})
    p._register("fs", tool)
    p._register("fs", tool)  # what a tools/list_changed notification does
    spec = p.proctor.gateway.catalog.require("mcp.fs.write_file")
    assert spec.mask == ("/content",) and spec.baselines == LOW
    assert spec.runner == "mcp" and spec.handler == "mcp.fs.write_file:handler"


def test_undeclared_tools_are_scored_high_from_untrusted_hints():
    p = proxy()
    reader = types.Tool(
        name="Peek-It",
        input_schema={"type": "object"},
        annotations=types.ToolAnnotations(read_only_hint=True, destructive_hint=False),
    )
    writer = types.Tool(name="zap", input_schema={"type": "object"})
    p._register("Other Server", reader)
    p._register("fs", writer)
    peek = p.proctor.gateway.catalog.require("mcp.other_server.peek_it")
    zap = p.proctor.gateway.catalog.require("mcp.fs.zap")
    assert peek.category == "read" and peek.baselines.risk == 3
    assert zap.category == "general" and zap.baselines.risk == 5
    assert sum(zap.baselines.as_dict().values()) >= 16  # the default policy asks approval


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({}, "mcpServers"),
        ({"mcpServers": {"a": {}}}, "mcpServers.a"),
        ({"mcpServers": {"a": {"command": "x", "url": "http://y"}}}, "mcpServers.a"),
        ({"mcpServers": {"a": {"command": "x", "args": "no"}}}, "mcpServers.a.args"),
    ],
)
def test_bad_configs_name_the_field(doc, field):
    with pytest.raises(ConfigError) as e:
        load_config(doc)
    assert e.value.field == field
