"""The upstream servers of the proxy, read from the usual ``mcpServers`` JSON shape.

Each entry is either a command to launch (stdio: ``command``, ``args``, ``env``) or a URL
(streamable HTTP: ``url``, optional ``headers``), as in desktop clients' configuration
files. An optional ``proctor`` object per entry holds what only the proxy reads (other
clients ignore unknown keys): ``namespace`` (always name this server's tools
``server.tool``), ``hide`` (tool names never listed nor callable) and ``maskResult`` (JSON
pointers into the tool result masked in the audit log).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proctor.errors import ConfigError

__all__ = ["UpstreamConfig", "load_config"]

_KNOWN = frozenset({"command", "args", "env", "url", "headers", "proctor", "type", "cwd"})
_PROCTOR_KEYS = frozenset({"namespace", "hide", "maskResult"})


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """One entry of ``mcpServers``: a command to launch (stdio) or a URL (streamable HTTP).

    Attributes:
        name: The entry's key; tools are named ``name.tool`` when namespaced.
        command: The program to launch (stdio). Exactly one of command and url is set.
        args: Its arguments.
        env: Variables added to the proxy's environment for it.
        cwd: Its working directory (default the proxy's).
        url: The streamable HTTP endpoint (``http(s)://host:port/mcp``).
        headers: HTTP headers sent to the URL (for example an Authorization header).
        namespace: Always expose this server's tools as ``name.tool``. Default False.
        hide: Tool names this proxy never lists nor forwards. Default none.
        mask_result: JSON pointers into a call's result document masked in the audit log
            (``/content`` masks everything the tool said). Default none.
    """

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] | None = None
    namespace: bool = False
    hide: frozenset[str] = field(default_factory=frozenset)
    mask_result: tuple[str, ...] = ()


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise ConfigError(f"{where} must be a list of strings", field=where)
    return tuple(value)


def _string_map(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(f"{where} must be an object of strings", field=where)
    return dict(value)


def _one(name: Any, entry: Any) -> UpstreamConfig:
    where = f"mcpServers.{name}"
    if not isinstance(name, str) or not name or "." in name:
        raise ConfigError(
            f"server name {name!r} must be a non-empty string without dots", field=where
        )
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be an object", field=where)
    unknown = sorted(set(entry) - _KNOWN)
    if unknown:
        raise ConfigError(
            f"{where} has an unknown key {unknown[0]!r}", field=f"{where}.{unknown[0]}"
        )
    if ("command" in entry) == ("url" in entry):
        raise ConfigError(f"{where} needs either command or url", field=where)
    command, url = entry.get("command"), entry.get("url")
    if command is not None and (not isinstance(command, str) or not command):
        raise ConfigError(f"{where}.command must be a non-empty string", field=f"{where}.command")
    if url is not None and (
        not isinstance(url, str) or not url.startswith(("http://", "https://"))
    ):
        raise ConfigError(f"{where}.url must be an http(s) URL", field=f"{where}.url")
    cwd = entry.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise ConfigError(f"{where}.cwd must be a string", field=f"{where}.cwd")
    extra = entry.get("proctor", {})
    if not isinstance(extra, dict):
        raise ConfigError(f"{where}.proctor must be an object", field=f"{where}.proctor")
    unknown = sorted(set(extra) - _PROCTOR_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}.proctor has an unknown key {unknown[0]!r}",
            field=f"{where}.proctor.{unknown[0]}",
            hint=f"Known keys: {', '.join(sorted(_PROCTOR_KEYS))}.",
        )
    namespace = extra.get("namespace", False)
    if not isinstance(namespace, bool):
        raise ConfigError(f"{where}.proctor.namespace must be a boolean", field=f"{where}.proctor")
    pointers = _strings(extra.get("maskResult", []), f"{where}.proctor.maskResult")
    for p in pointers:
        if p and not p.startswith("/"):
            raise ConfigError(
                f"{p!r} is not a JSON pointer (RFC 6901: '' or '/a/b')",
                field=f"{where}.proctor.maskResult",
            )
    return UpstreamConfig(
        name=name,
        command=command,
        args=_strings(entry.get("args", []), f"{where}.args"),
        env=_string_map(entry.get("env"), f"{where}.env"),
        cwd=cwd,
        url=url,
        headers=_string_map(entry.get("headers"), f"{where}.headers"),
        namespace=namespace,
        hide=frozenset(_strings(extra.get("hide", []), f"{where}.proctor.hide")),
        mask_result=pointers,
    )


def load_config(doc: Mapping[str, Any]) -> list[UpstreamConfig]:
    """Read ``{"mcpServers": {name: {command, args, env} | {url, headers}}}``.

    Args:
        doc: The parsed JSON document.

    Returns:
        The upstream servers, in the document's order.

    Raises:
        ConfigError: naming the server and key at fault.
    """
    if not isinstance(doc, Mapping):
        raise ConfigError("the config must be a JSON object", field="mcpServers")
    servers = doc.get("mcpServers")
    if not isinstance(servers, dict) or not servers:
        raise ConfigError("the config needs mcpServers: {name: {...}}", field="mcpServers")
    return [_one(name, entry) for name, entry in servers.items()]
