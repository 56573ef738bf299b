"""The tools of one run, built from its agent's specs as the run starts (§7.1).

Builtin, client, HTTP and agent tools come from their specs; an MCP server's tools are
listed from the server (cached for a short time). A name used twice, by two specs or by an
MCP server and another tool, fails the run with `tool_conflict` before its first turn.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from app.runs.subruns import Subruns
from app.schemas.tools import HttpTool, McpTool
from app.services.tool_secrets import read_secret
from app.store.db import Database
from app.tools.base import Tool
from app.tools.mcp import McpClients, McpUnavailable
from app.tools.net import HostPolicy, mcp_client_factory, normalize_host
from app.tools.runner import ToolRunner
from app.tools.specs import parse_spec, tool_of

logger = logging.getLogger("loomd.tools")


class ToolConflict(Exception):
    """Two of a run's tools have one name."""


@dataclass(frozen=True)
class ToolSources:
    """What building a run's tools needs beyond its specs."""

    database: Database
    owner: str
    hosts: HostPolicy
    mcp: McpClients
    subruns: Subruns | None


async def build_tools(specs: Sequence[Mapping[str, Any]], only: Collection[str] | None,
                      sources: ToolSources) -> ToolRunner:
    """The run's tools; raises `ToolConflict` when two of them share a name."""
    tools: list[tuple[Tool, str]] = []
    secret: str | None = None
    secret_read = False
    for raw in specs:
        spec = parse_spec(raw)
        if isinstance(spec, McpTool):
            for tool in await _mcp_tools(spec, sources):
                if only is None or tool.name in only:
                    tools.append((tool, f"the MCP server {spec.server_url}"))
            continue
        if only is not None and spec.name not in only:
            continue
        if isinstance(spec, HttpTool) and not secret_read:
            secret, secret_read = await read_secret(sources.database, sources.owner), True
        tools.append((tool_of(spec, secret=secret, subruns=sources.subruns),
                      f"the {spec.type} tool {spec.name!r}"))
    seen: dict[str, str] = {}
    for tool, origin in tools:
        if tool.name in seen:
            raise ToolConflict(f"two tools are named {tool.name!r}: {seen[tool.name]} and "
                               f"{origin}; rename one, or narrow the server's allowed_tools")
        seen[tool.name] = origin
    return ToolRunner(tool for tool, _ in tools)


async def _mcp_tools(spec: McpTool, sources: ToolSources) -> list[Tool]:
    """The server's tools, or none when it cannot be listed (the run goes on without them:
    a server that is down must not fail every run of the agent)."""
    refusal = sources.hosts.host_refusal(normalize_host(urlsplit(str(spec.server_url))
                                                        .hostname or ""))
    if refusal is not None:  # a listing cached for another run must not show here
        logger.info("an MCP server is out of the run's reach",
                    extra={"server_url": str(spec.server_url), "error": refusal})
        return []
    try:
        return await sources.mcp.tools(spec, client_factory=mcp_client_factory(sources.hosts))
    except McpUnavailable as error:
        logger.warning("an MCP server could not be listed",
                       extra={"server_url": str(spec.server_url), "error": str(error)})
        return []
