"""Run an agent's tools (§7): look a call up, check its arguments, call it with a timeout.

Whatever the model or the tool does, a call ends in a `ToolResult`; only cancellation
propagates. A failing tool gives the model an error result it can react to, never a
failed run.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from jsonschema import Draft202012Validator, SchemaError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from app.providers.base import ToolDef
from app.schemas.tools import McpTool
from app.tools.arithmetic import format_number
from app.tools.base import Tool, ToolContext, ToolResult
from app.tools.client_tool import ClientSideTool
from app.tools.specs import parse_spec, tool_of

logger = logging.getLogger("loomd.tools")

DEFAULT_TIMEOUT_S = 60.0
MAX_SCHEMA_PROBLEMS = 5
MAX_MESSAGE_CHARS = 500

PendingCall = tuple[str, str, str]
"""`(tool_call_id, name, arguments_json)` as the model sent it."""


@functools.lru_cache(maxsize=1024)
def _compiled(schema_json: str) -> Validator:
    """The validator of a parameters schema, checked against its metaschema once.

    Every run builds its runner from the agent's specs; checking a schema is the costly part
    and its outcome depends on the schema alone. Raises `SchemaError` (not cached).
    """
    schema = json.loads(schema_json)
    validator_class = validator_for(schema, default=Draft202012Validator)
    validator_class.check_schema(schema)
    return validator_class(schema)


class ToolRunner:
    """The tools one run may call, by name, each with its compiled argument validator."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        """Register `tools`; raises `ValueError` on a duplicate name or an invalid schema."""
        self._tools: dict[str, Tool] = {}
        self._validators: dict[str, Validator] = {}
        for tool in tools:
            if tool.name in self._tools:
                raise ValueError(f"tool name {tool.name!r} is used twice")
            try:
                validator = _compiled(json.dumps(tool.parameters, sort_keys=True))
            except SchemaError as exc:
                raise ValueError(
                    f"the parameters of {tool.name!r} are not a valid JSON Schema: {exc.message}",
                ) from exc
            self._tools[tool.name] = tool
            self._validators[tool.name] = validator

    @classmethod
    def from_specs(
        cls, specs: Iterable[Mapping[str, Any]], only: Collection[str] | None = None,
    ) -> ToolRunner:
        """Build from an agent's `config["tools"]` without reaching any service; `only`
        keeps just those names. For the tools' schemas (checking arguments) and for tests:
        runs build theirs with `app.runs.tools.build_tools`.

        MCP tools are skipped (their names come from the server); `http` tools have no
        secret and `agent` tools cannot start subruns. Raises `ValueError` on a malformed
        spec.
        """
        parsed = [parse_spec(spec) for spec in specs]
        tools = [tool_of(spec) for spec in parsed if not isinstance(spec, McpTool)]
        if only is not None:
            wanted = set(only)
            tools = [tool for tool in tools if tool.name in wanted]
        return cls(tools)

    @property
    def names(self) -> list[str]:
        """The tool names, in spec order."""
        return list(self._tools)

    def definitions(self) -> list[ToolDef]:
        """The functions to offer the model, in spec order."""
        return [
            ToolDef(name=tool.name, description=tool.description or None,
                    parameters=tool.parameters)
            for tool in self._tools.values()
        ]

    def is_client_tool(self, name: str) -> bool:
        """Whether the API client, not the server, runs `name` (the run then requires action)."""
        return isinstance(self._tools.get(name), ClientSideTool)

    async def run(
        self, name: str, arguments_json: str, context: ToolContext,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> ToolResult:
        """Call tool `name` with the model's JSON arguments; never raises but CancelledError.

        Unknown tools, unparsable or schema-violating arguments, exceptions, timeouts and
        non-text output all become error results the model can read and retry after.
        """
        checked = self._checked(name, arguments_json)
        if isinstance(checked, ToolResult):
            return checked
        return await _call(self._tools[name], checked, context, timeout_s)

    def check_arguments(self, name: str, arguments_json: str) -> ToolResult | None:
        """The error result `run` would give before calling the tool; None when the tool
        exists and takes these arguments."""
        checked = self._checked(name, arguments_json)
        return checked if isinstance(checked, ToolResult) else None

    def _checked(self, name: str, arguments_json: str) -> dict[str, Any] | ToolResult:
        if name not in self._tools:
            available = ", ".join(self._tools) or "none"
            return _error(f"unknown tool {name!r}; available tools: {available}")
        arguments = _parse_arguments(arguments_json)
        if isinstance(arguments, ToolResult):
            return arguments
        problem = self._argument_problem(name, arguments)
        if problem is not None:
            return _error(problem)
        return arguments

    async def run_many(
        self, calls: Sequence[PendingCall], context_factory: Callable[[str], ToolContext],
        max_parallel: int, timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> list[ToolResult]:
        """Run `calls` concurrently, at most `max_parallel` at a time; results in input order.

        `context_factory(tool_call_id)` makes each call's context. Cancelling this cancels
        every call still running or waiting.
        """
        if max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
        semaphore = asyncio.Semaphore(max_parallel)
        # Contexts first, so a failing factory raises before any tool has started.
        contexts = [context_factory(tool_call_id) for tool_call_id, _, _ in calls]

        async def run_bounded(call: PendingCall, context: ToolContext) -> ToolResult:
            async with semaphore:
                return await self.run(call[1], call[2], context, timeout_s)

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(run_bounded(call, context))
                     for call, context in zip(calls, contexts, strict=True)]
        return [task.result() for task in tasks]

    def _argument_problem(self, name: str, arguments: dict[str, Any]) -> str | None:
        try:
            errors = sorted(self._validators[name].iter_errors(arguments),
                            key=lambda error: error.json_path)
        except Exception as exc:  # e.g. a `$ref` to a document we do not fetch
            return f"the arguments of {name!r} cannot be checked: {_clip(str(exc))}"
        if not errors:
            return None
        problems = [f"{error.json_path}: {_clip(error.message)}"
                    for error in errors[:MAX_SCHEMA_PROBLEMS]]
        if len(errors) > MAX_SCHEMA_PROBLEMS:
            problems.append(f"and {len(errors) - MAX_SCHEMA_PROBLEMS} more")
        return f"invalid arguments for {name!r}: " + "; ".join(problems)


def _parse_arguments(arguments_json: str) -> dict[str, Any] | ToolResult:
    if not arguments_json.strip():
        return {}  # some models send "" for a call without arguments
    try:
        arguments = json.loads(arguments_json, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        return _error(f"the arguments are not valid JSON: {_clip(str(exc))}")
    if not isinstance(arguments, dict):
        return _error(f"the arguments must be a JSON object, not {_json_type(arguments)}")
    return arguments


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array"


async def _call(
    tool: Tool, arguments: dict[str, Any], context: ToolContext, timeout_s: float,
) -> ToolResult:
    deadline = asyncio.timeout(timeout_s)
    try:
        async with deadline:
            value = await tool.call(arguments, context)
    except TimeoutError as exc:
        if deadline.expired():
            return _error(f"tool {tool.name!r} timed out after {format_number(timeout_s)} s")
        return _failed(tool.name, exc, context)
    except Exception as exc:
        return _failed(tool.name, exc, context)
    return _coerce(tool.name, value)


def _failed(name: str, exc: Exception, context: ToolContext) -> ToolResult:
    logger.warning("tool %s raised", name, exc_info=exc,
                   extra={"run_id": context.run_id, "tool_call_id": context.tool_call_id})
    message = str(exc) or "(no message)"
    return _error(f"tool {name!r} failed: {type(exc).__name__}: {_clip(message)}")


def _coerce(name: str, value: object) -> ToolResult:
    """Turn whatever a tool returned into a storable result; junk becomes an error result."""
    output: object = value
    is_error = False
    if isinstance(value, ToolResult):
        output, is_error = value.output, bool(value.is_error)
    if not isinstance(output, str):
        text = _as_json_text(output)
        if text is None:
            return _error(f"tool {name!r} returned {type(output).__name__}, not text")
        output = text
    return ToolResult(_storable(output), is_error)


def _as_json_text(value: object) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None


def _storable(text: str) -> str:
    # Postgres text cannot hold NUL, and lone surrogates cannot be encoded as UTF-8.
    text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _clip(text: str) -> str:
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    # Keep both ends: jsonschema quotes the value first and names the broken rule last.
    tail = MAX_MESSAGE_CHARS // 3
    return text[:MAX_MESSAGE_CHARS - tail] + " … " + text[-tail:]


def _error(message: str) -> ToolResult:
    return ToolResult(message, is_error=True)
