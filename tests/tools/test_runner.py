"""The tool runner: lookup, argument checks, failures as error results, bounded parallelism."""

import asyncio
import json
from typing import Any

import pytest

from app.providers.base import ToolDef
from app.tools.base import ToolContext, ToolResult
from app.tools.builtins import Calculator, Sleep
from app.tools.runner import ToolRunner

CLIENT_SPEC = {
    "type": "client", "name": "read_local_file", "description": "Read a file on the user's disk.",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                   "required": ["path"]},
}

MIXED_SPECS = [
    {"type": "builtin", "name": "calculator"},
    {"type": "builtin", "name": "current_time"},
    CLIENT_SPEC,
    {"type": "http", "name": "lookup_order", "description": "Find an order.",
     "url": "https://example.com/orders", "timeout_ms": 10000,
     "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}},
    {"type": "mcp", "server_url": "https://example.com/mcp", "allowed_tools": None,
     "headers": {}, "timeout_ms": 60000},
    {"type": "agent", "name": "researcher", "agent": "researcher", "description": None},
]


def context(tool_call_id: str = "call_1") -> ToolContext:
    return ToolContext(run_id="run_1", session_id="ses_1", owner="alice",
                       tool_call_id=tool_call_id)


class FakeTool:
    """A tool whose behaviour is a coroutine function given by the test."""

    description = "a fake"

    def __init__(self, name: str, behaviour: Any, parameters: dict[str, Any] | None = None):
        self.name = name
        self.behaviour = behaviour
        self.parameters = parameters or {"type": "object", "properties": {}}
        self.calls: list[dict[str, Any]] = []

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        self.calls.append(arguments)
        return await self.behaviour(arguments, context)


def returning(value: Any):
    async def behaviour(arguments, context):
        return value
    return behaviour


def raising(exc: BaseException):
    async def behaviour(arguments, context):
        raise exc
    return behaviour


async def run_one(tool: Any, arguments_json: str = "{}", **kwargs: Any) -> ToolResult:
    return await ToolRunner([tool]).run(tool.name, arguments_json, context(), **kwargs)


class TestLookupAndArguments:
    async def test_a_builtin_runs(self):
        runner = ToolRunner.from_specs([{"type": "builtin", "name": "calculator"}])
        result = await runner.run("calculator", '{"expression": "2+3"}', context())
        assert result == ToolResult("5")

    async def test_unknown_tool_names_the_available_ones(self):
        runner = ToolRunner.from_specs([{"type": "builtin", "name": "calculator"},
                                        {"type": "builtin", "name": "sleep"}])
        result = await runner.run("rm_rf", "{}", context())
        assert result.is_error
        assert "unknown tool 'rm_rf'" in result.output
        assert "calculator, sleep" in result.output

    @pytest.mark.parametrize("arguments", ['{"expression": ', "not json", "{'a': 1}", "NaN",
                                           '{"x": Infinity}', "[" * 100_000])
    async def test_invalid_json_is_an_error_result(self, arguments):
        result = await run_one(Calculator(), arguments)
        assert result.is_error
        assert "not valid JSON" in result.output

    @pytest.mark.parametrize(("arguments", "kind"), [
        ("[1, 2]", "an array"), ('"2+3"', "a string"), ("3", "a number"), ("null", "null"),
        ("true", "a boolean"),
    ])
    async def test_arguments_must_be_an_object(self, arguments, kind):
        result = await run_one(Calculator(), arguments)
        assert result.is_error
        assert f"must be a JSON object, not {kind}" in result.output

    async def test_empty_arguments_mean_an_empty_object(self):
        tool = FakeTool("noop", returning("done"))
        assert await run_one(tool, "  ") == ToolResult("done")
        assert tool.calls == [{}]

    @pytest.mark.parametrize(("arguments", "problem"), [
        ("{}", "$: 'expression' is a required property"),
        ('{"expression": 5}', "$.expression: 5 is not of type 'string'"),
        ('{"expression": "1", "extra": true}', "Additional properties are not allowed"),
        ('{"expression": "' + "1" * 1001 + '"}', "is too long"),
    ])
    async def test_schema_violations_are_listed(self, arguments, problem):
        result = await run_one(Calculator(), arguments)
        assert result.is_error
        assert result.output.startswith("invalid arguments for 'calculator': ")
        assert problem in result.output
        assert len(result.output) < 1000

    @pytest.mark.parametrize("seconds", ["-1", "61", '"5"', "true"])
    async def test_sleep_bounds_are_enforced_by_the_schema(self, seconds):
        result = await run_one(Sleep(), '{"seconds": ' + seconds + "}")
        assert result.is_error
        assert "invalid arguments for 'sleep'" in result.output

    async def test_many_problems_are_summarised(self):
        parameters = {"type": "object",
                      "properties": {f"p{i}": {"type": "integer"} for i in range(8)}}
        tool = FakeTool("typed", returning("ok"), parameters)
        result = await run_one(tool, json.dumps({f"p{i}": "x" for i in range(8)}))
        assert result.is_error
        assert "and 3 more" in result.output
        assert tool.calls == []


class TestFailures:
    async def test_a_raising_tool_gives_its_message_not_a_traceback(self):
        result = await run_one(FakeTool("boom", raising(RuntimeError("disk on fire"))))
        assert result == ToolResult("tool 'boom' failed: RuntimeError: disk on fire",
                                    is_error=True)
        assert "Traceback" not in result.output

    async def test_an_exception_without_a_message_is_named(self):
        result = await run_one(FakeTool("boom", raising(KeyError())))
        assert result.is_error
        assert "KeyError" in result.output

    async def test_a_timeout_inside_the_tool_is_a_failure_not_our_timeout(self):
        result = await run_one(FakeTool("slow_upstream", raising(TimeoutError("upstream"))))
        assert result.is_error
        assert "failed: TimeoutError: upstream" in result.output

    async def test_a_tool_exceeding_its_timeout(self):
        async def forever(arguments, context):
            await asyncio.sleep(30)

        result = await run_one(FakeTool("stuck", forever), timeout_s=0.05)
        assert result == ToolResult("tool 'stuck' timed out after 0.05 s", is_error=True)

    async def test_a_zero_timeout_times_out_at_once(self):
        async def forever(arguments, context):
            await asyncio.sleep(30)

        result = await run_one(FakeTool("stuck", forever), timeout_s=0.0)
        assert result.output == "tool 'stuck' timed out after 0 s"

    async def test_cancellation_propagates(self):
        async def forever(arguments, context):
            await asyncio.sleep(30)

        task = asyncio.create_task(run_one(FakeTool("stuck", forever)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=1)

    @pytest.mark.parametrize(("returned", "expected"), [
        ("plain text", ToolResult("plain text")),
        (ToolResult("bad", is_error=True), ToolResult("bad", is_error=True)),
        ({"a": [1, "é"]}, ToolResult('{"a": [1, "é"]}')),
        (42, ToolResult("42")),
        (ToolResult(["x"]), ToolResult('["x"]')),
        ("nul\x00byte", ToolResult("nul\ufffdbyte")),
        ("lone \ud800 surrogate", ToolResult("lone ? surrogate")),
    ])
    async def test_output_is_made_storable_text(self, returned, expected):
        assert await run_one(FakeTool("odd", returning(returned))) == expected

    @pytest.mark.parametrize("junk", [None, b"bytes", object(), float("nan"), {1, 2}])
    async def test_junk_output_is_an_error(self, junk):
        result = await run_one(FakeTool("junk", returning(junk)))
        assert result.is_error
        assert "returned" in result.output and "not text" in result.output

    async def test_a_schema_python_cannot_apply_is_an_error_result(self):
        parameters = {"type": "object",
                      "properties": {"q": {"$ref": "https://example.invalid/q.json"}}}
        result = await run_one(FakeTool("odd_schema", returning("ok"), parameters), '{"q": "a"}')
        assert result.is_error
        assert "cannot be checked" in result.output


class TestFromSpecs:
    def test_definitions_in_spec_order_without_mcp(self):
        runner = ToolRunner.from_specs(MIXED_SPECS)
        definitions = runner.definitions()
        assert [d.name for d in definitions] == [
            "calculator", "current_time", "read_local_file", "lookup_order", "researcher"]
        assert definitions[0] == ToolDef("calculator", Calculator.description,
                                         Calculator().parameters)
        assert definitions[2] == ToolDef("read_local_file", "Read a file on the user's disk.",
                                         CLIENT_SPEC["parameters"])
        assert definitions[3].parameters["properties"] == {"id": {"type": "string"}}
        assert definitions[4].description and "researcher" in definitions[4].description

    def test_a_client_tool_without_description_or_parameters(self):
        runner = ToolRunner.from_specs([{"type": "client", "name": "pick_colour"}])
        assert runner.definitions() == [
            ToolDef("pick_colour", None, {"type": "object", "properties": {}})]

    def test_client_tools_are_recognised(self):
        runner = ToolRunner.from_specs(MIXED_SPECS)
        assert runner.is_client_tool("read_local_file")
        assert not runner.is_client_tool("calculator")
        assert not runner.is_client_tool("missing")

    async def test_calling_a_client_tool_on_the_server_is_an_error_result(self):
        runner = ToolRunner.from_specs([CLIENT_SPEC])
        result = await runner.run("read_local_file", '{"path": "/x"}', context())
        assert result.is_error
        assert "runs on the client" in result.output

    async def test_without_their_services_http_and_agent_tools_say_so(self):
        runner = ToolRunner.from_specs(MIXED_SPECS)
        lookup = await runner.run("lookup_order", '{"id": "o1"}', context())
        assert lookup.is_error and "tool secret" in lookup.output
        research = await runner.run("researcher", '{"input": "hi"}', context())
        assert research == ToolResult("the subagent 'researcher' cannot run here",
                                      is_error=True)

    async def test_todo_write_keeps_the_new_list_for_the_caller(self):
        runner = ToolRunner.from_specs([{"type": "builtin", "name": "todo_write"}])
        call_context = context()
        items = [{"content": "ship it", "status": "pending"}]
        result = await runner.run("todo_write", json.dumps({"items": items}), call_context)
        assert not result.is_error and "[pending] ship it" in result.output
        assert call_context.state["todos"] == items

    async def test_only_narrows_the_set(self):
        only = ["current_time", "read_local_file", "nope"]
        runner = ToolRunner.from_specs(MIXED_SPECS, only=only)
        assert runner.names == ["current_time", "read_local_file"]
        result = await runner.run("calculator", '{"expression": "1"}', context())
        assert result.is_error
        assert "available tools: current_time, read_local_file" in result.output

    def test_only_empty_means_no_tools(self):
        runner = ToolRunner.from_specs(MIXED_SPECS, only=[])
        assert runner.definitions() == []

    @pytest.mark.parametrize("spec", [
        {"type": "teleport", "name": "x"}, {"type": "builtin", "name": "rm"},
        {"type": "client"}])
    def test_a_malformed_spec_is_refused(self, spec):
        with pytest.raises(ValueError):
            ToolRunner.from_specs([spec])

    def test_an_invalid_parameters_schema_is_refused(self):
        parameters = {"type": "object", "properties": {"q": {"type": "text"}}}
        with pytest.raises(ValueError, match="not a valid JSON Schema"):
            ToolRunner([FakeTool("bad_schema", returning("ok"), parameters)])

    def test_duplicate_names_are_refused(self):
        with pytest.raises(ValueError, match="used twice"):
            ToolRunner.from_specs([{"type": "builtin", "name": "sleep"},
                                   {"type": "client", "name": "sleep"}])


class TestRunMany:
    async def test_results_keep_the_input_order(self):
        async def delayed(arguments, context):
            await asyncio.sleep(arguments["delay"])
            return context.tool_call_id

        runner = ToolRunner([FakeTool("delayed", delayed)])
        calls = [(f"call_{i}", "delayed", json.dumps({"delay": delay}))
                 for i, delay in enumerate([0.06, 0.0, 0.03])]
        results = await runner.run_many(calls, context, max_parallel=3)
        assert [r.output for r in results] == ["call_0", "call_1", "call_2"]

    async def test_failures_stay_in_their_slot(self):
        runner = ToolRunner.from_specs([{"type": "builtin", "name": "calculator"}])
        calls = [("a", "calculator", '{"expression": "1+1"}'), ("b", "nope", "{}"),
                 ("c", "calculator", "{bad")]
        results = await runner.run_many(calls, context, max_parallel=2)
        assert results[0] == ToolResult("2")
        assert results[1].is_error and "unknown tool" in results[1].output
        assert results[2].is_error and "not valid JSON" in results[2].output

    @pytest.mark.parametrize("max_parallel", [1, 2, 3])
    async def test_no_more_than_max_parallel_run_at_once(self, max_parallel):
        running = 0
        peak = 0

        async def counted(arguments, context):
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1
            return "ok"

        runner = ToolRunner([FakeTool("counted", counted)])
        calls = [(f"call_{i}", "counted", "{}") for i in range(7)]
        results = await runner.run_many(calls, context, max_parallel=max_parallel)
        assert peak == max_parallel
        assert all(r == ToolResult("ok") for r in results)

    async def test_cancellation_reaches_every_call(self):
        started = 0
        cancelled = 0

        async def forever(arguments, context):
            nonlocal started, cancelled
            started += 1
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled += 1
                raise

        runner = ToolRunner([FakeTool("stuck", forever)])
        calls = [(f"call_{i}", "stuck", "{}") for i in range(5)]
        task = asyncio.create_task(runner.run_many(calls, context, max_parallel=3))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=1)
        assert (started, cancelled) == (3, 3)

    async def test_no_calls(self):
        assert await ToolRunner([]).run_many([], context, max_parallel=1) == []

    async def test_max_parallel_must_be_positive(self):
        with pytest.raises(ValueError):
            await ToolRunner([]).run_many([], context, max_parallel=0)
