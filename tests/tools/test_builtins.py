"""The builtin tools: calculator, current_time and sleep."""

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from app.tools.base import ToolContext
from app.tools.builtins import BUILTINS, Calculator, CurrentTime, Sleep


def context() -> ToolContext:
    return ToolContext(run_id="run_1", session_id="ses_1", owner="alice", tool_call_id="call_1")


async def calculate(expression: str):
    return await Calculator().call({"expression": expression}, context())


class TestCalculator:
    @pytest.mark.parametrize(("expression", "expected"), [
        ("2+3", "5"),
        ("7/2", "3.5"),
        ("4/2", "2"),
        ("2*3-4", "2"),
        ("2 ** 10", "1024"),
        ("2**3**2", "512"),
        ("-3 + 1", "-2"),
        ("--3", "3"),
        ("+3", "3"),
        ("-(2+3)*4", "-20"),
        ("17 % 5", "2"),
        ("-7 % 3", "2"),
        ("5.5 % 2", "1.5"),
        ("0.1+0.2", "0.3"),
        ("1.1*3", "3.3"),
        ("1/3", "0.333333333333"),
        ("2**0.5", "1.41421356237"),
        ("2**-2", "0.25"),
        ("1e-20 * 3", "3e-20"),
        ("1e20 * 3", "3e+20"),
        ("-0.0", "0"),
        ("10**50", "1" + "0" * 50),
        ("  (1 + 2) * 3  ", "9"),
        ("1_000 + 1", "1001"),
    ])
    async def test_arithmetic(self, expression, expected):
        result = await calculate(expression)
        assert (result.output, result.is_error) == (expected, False)

    @pytest.mark.parametrize(("expression", "message"), [
        ("1/0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("1.5/0.0", "division by zero"),
        ("0**-1", "division by zero"),
        ("2+", "invalid syntax"),
        ("(1+2", "invalid syntax"),
        ("", "empty"),
        ("   ", "empty"),
        ("x + 1", "names are not allowed: x"),
        ("__import__('os')", "function calls are not allowed"),
        ("abs(-1)", "function calls are not allowed"),
        ("(1).real", "attribute access is not allowed"),
        ("'a' * 3", "only numbers are allowed"),
        ("True + 1", "only numbers are allowed"),
        ("2j", "only numbers are allowed"),
        ("7 // 2", "`//` is not supported"),
        ("1 << 3", "`<<` is not supported"),
        ("~1", "`~` is not supported"),
        ("1 < 2", "is not supported"),
        ("[1, 2]", "is not supported"),
        ("(-8) ** (1/3)", "not a real number"),
        ("1" * 1001, "longer than 1000 characters"),
        ("(" * 300 + "1" + ")" * 300, "invalid syntax"),
        ("-" * 500 + "1", "nested more than"),
    ])
    async def test_errors(self, expression, message):
        result = await calculate(expression)
        assert result.is_error
        assert message in result.output

    @pytest.mark.parametrize("expression", [
        "9**9**9",
        "2**100000",
        "(10**999)**999",
        "10**3000 * 10**3000 * 10**3000 * 10**3000",
        "2.0**100000",
        "1e308 * 10",
        "10**400 * 1.5",
        "10**3000 / 3",
        "(9**9**9) % 7",
    ])
    async def test_huge_results_are_refused_quickly(self, expression):
        started = time.monotonic()
        result = await calculate(expression)
        assert result.is_error
        assert "too large" in result.output
        assert time.monotonic() - started < 2

    async def test_large_but_bounded_integers_are_exact(self):
        result = await calculate("2**5000 - 2**5000 + 7")
        assert (result.output, result.is_error) == ("7", False)


class TestCurrentTime:
    async def test_utc_by_default(self):
        result = await CurrentTime().call({}, context())
        assert not result.is_error
        assert result.output.endswith("Z")
        moment = datetime.fromisoformat(result.output)
        assert abs(moment - datetime.now(UTC)) < timedelta(seconds=5)

    async def test_in_a_named_zone(self):
        result = await CurrentTime().call({"timezone": "Asia/Kolkata"}, context())
        assert not result.is_error
        assert result.output.endswith("+05:30")
        moment = datetime.fromisoformat(result.output)
        assert abs(moment - datetime.now(UTC)) < timedelta(seconds=5)

    @pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "../etc/passwd", "/etc/localtime",
                                      "zone.tab"])
    async def test_unknown_zone_is_an_error(self, zone):
        result = await CurrentTime().call({"timezone": zone}, context())
        assert result.is_error
        assert "unknown time zone" in result.output


class TestSleep:
    @pytest.mark.parametrize(("seconds", "text"), [(0, "slept 0 s"), (0.01, "slept 0.01 s")])
    async def test_returns_how_long_it_slept(self, seconds, text):
        result = await Sleep().call({"seconds": seconds}, context())
        assert (result.output, result.is_error) == (text, False)

    @pytest.mark.parametrize(("seconds", "text"), [(1, "slept 1 s"), (0.5, "slept 0.5 s")])
    async def test_formats_the_seconds_as_given(self, seconds, text, monkeypatch):
        async def no_wait(_: float) -> None:
            return None

        monkeypatch.setattr("app.tools.builtins.asyncio.sleep", no_wait)
        result = await Sleep().call({"seconds": seconds}, context())
        assert result.output == text

    async def test_cancellation_ends_it_promptly(self):
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(Sleep().call({"seconds": 30}, context()))
        await asyncio.sleep(0.05)
        started = loop.time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=1)
        assert loop.time() - started < 1


def test_every_builtin_has_a_valid_object_schema():
    from jsonschema import Draft202012Validator

    for name, factory in BUILTINS.items():
        tool = factory()
        assert tool.name == name
        assert tool.description
        assert tool.parameters["type"] == "object"
        Draft202012Validator.check_schema(tool.parameters)
