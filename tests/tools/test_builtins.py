"""The builtin tools: calculator, current_time, http_fetch and sleep."""

import asyncio
import gzip
import socket
import time
from datetime import UTC, datetime, timedelta

import pytest

from app.config import PrivateUrls
from app.tools.base import ToolContext
from app.tools.builtins import BUILTINS, Calculator, CurrentTime, HttpFetch, Sleep
from app.tools.net import HostPolicy
from tests.tools.receivers import Receiver, Reply, answer, hang, redirect

LOOPBACK = HostPolicy(private=PrivateUrls.parse("127.0.0.1"))
MIB = 1024 * 1024


def context(hosts: HostPolicy | None = None) -> ToolContext:
    return ToolContext(run_id="run_1", session_id="ses_1", owner="alice", tool_call_id="call_1",
                       hosts=hosts)


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


async def fetch(url: str, hosts: HostPolicy | None = LOOPBACK, **options):
    return await HttpFetch(**options).call({"url": url}, context(hosts))


class TestHttpFetch:
    async def test_the_status_type_and_body(self):
        async with Receiver(answer(Reply.text("hello", content_type="text/plain"))) as site:
            result = await fetch(site.url("/page"))
        assert (result.output, result.is_error) == (
            "HTTP 200 OK\nContent-Type: text/plain\n\nhello", False)
        assert [(r.method, r.target) for r in site.requests] == [("GET", "/page")]

    @pytest.mark.parametrize(("reply", "text"), [
        (Reply.text("café", content_type="text/html; charset=iso-8859-1"), "café"),
        (Reply(200, b"ok \xff\xfe", {"Content-Type": "text/plain"}), "ok \ufffd\ufffd"),
        (Reply(200, "naïve".encode(), {"Content-Type": "text/plain; charset=bogus"}), "naïve"),
        (Reply(200, gzip.compress(b"unzipped"), {"Content-Encoding": "gzip"}), "unzipped"),
    ])
    async def test_the_body_is_decoded_by_its_charset(self, reply, text):
        async with Receiver(answer(reply)) as site:
            result = await fetch(site.url())
        assert not result.is_error, result.output
        assert result.output.split("\n\n", 1)[1] == text

    async def test_a_body_over_1_mib_is_cut_there(self):
        async with Receiver(answer(Reply.text("a" * MIB + "b" * 10))) as site:
            result = await fetch(site.url())
        assert not result.is_error
        body, note = result.output.split("\n\n", 1)[1].rsplit("\n\n", 1)
        assert body == "a" * MIB
        assert note == "[truncated: the body is larger than 1 MiB; only its first 1 MiB is shown]"

    async def test_a_body_of_exactly_1_mib_is_whole(self):
        async with Receiver(answer(Reply.text("a" * MIB))) as site:
            result = await fetch(site.url())
        assert result.output.split("\n\n", 1)[1] == "a" * MIB

    async def test_a_binary_body_is_not_shown(self):
        png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
        async with Receiver(answer(Reply(200, png, {"Content-Type": "image/png"}))) as site:
            result = await fetch(site.url())
        assert result.output.endswith("\n\n[16 bytes of binary content, not shown]")

    async def test_redirects_are_followed_and_the_final_url_shown(self):
        async with (
            Receiver(answer(Reply.text("moved here"))) as target,
            Receiver(redirect(target.url("/new"), status=301)) as site,
        ):
            result = await fetch(site.url("/old"))
        assert not result.is_error
        assert f"URL: {target.url('/new')}" in result.output
        assert result.output.endswith("moved here")

    async def test_more_than_5_redirects_is_an_error(self):
        async with Receiver() as site:
            site.handler = redirect(site.url("/again"))
            result = await fetch(site.url())
        assert result.is_error
        assert "more than 5 redirects" in result.output
        assert len(site.requests) == 6

    @pytest.mark.parametrize(("status", "line"), [
        (404, "HTTP 404 Not Found"), (503, "HTTP 503 Service Unavailable")])
    async def test_a_non_2xx_status_is_an_error_with_the_body(self, status, line):
        async with Receiver(answer(Reply.text("no such page", status=status))) as site:
            result = await fetch(site.url())
        assert result.is_error
        assert result.output.startswith(line)
        assert result.output.endswith("\n\nno such page")

    async def test_a_server_that_does_not_answer_in_time(self):
        async with Receiver(hang()) as site:
            result = await fetch(site.url(), timeout_s=0.2)
        assert result.is_error
        assert result.output == f"cannot fetch {site.url()}: timed out after 0.2 s"

    async def test_a_name_that_does_not_resolve(self):
        async def no_such_name(host: str, port: int) -> list[str]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        result = await fetch("https://nowhere.example.test/", resolver=no_such_name)
        assert result.is_error
        assert "DNS lookup failed: could not resolve nowhere.example.test" in result.output

    async def test_a_closed_port_is_a_connect_error(self):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            result = await fetch(f"http://127.0.0.1:{port}/")
        assert result.is_error
        assert "could not connect" in result.output

    @pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "example.com"])
    async def test_only_http_and_https(self, url):
        result = await fetch(url)
        assert result.is_error
        assert "only http:// and https:// URLs" in result.output

    async def test_a_run_without_network_reaches_nothing(self):
        async with Receiver() as site:
            result = await fetch(site.url(), hosts=None)
        assert result.is_error
        assert "may not use the network" in result.output
        assert site.connections == 0

    async def test_a_host_outside_the_allowed_hosts_is_not_reached(self):
        hosts = HostPolicy(hosts=("example.com",), private=PrivateUrls(everything=True))
        async with Receiver() as site:
            result = await fetch(site.url(), hosts=hosts)
        assert result.is_error
        assert "127.0.0.1 is not among the hosts this run may reach (example.com)" in result.output
        assert site.connections == 0

    async def test_a_private_address_is_refused_by_default(self):
        async with Receiver() as site:
            result = await fetch(site.url(), hosts=HostPolicy())
        assert result.is_error
        assert "refused: 127.0.0.1, a private address" in result.output
        assert site.connections == 0


def test_every_builtin_has_a_valid_object_schema():
    from jsonschema import Draft202012Validator

    for name, factory in BUILTINS.items():
        tool = factory()
        assert tool.name == name
        assert tool.description
        assert tool.parameters["type"] == "object"
        Draft202012Validator.check_schema(tool.parameters)
