"""The network guard of tools: allowed hosts, the private-address check, and connect time."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence

import httpx2
import pytest

from app.config import PrivateUrls, Settings
from app.tools import net
from app.tools.base import ToolContext
from app.tools.builtins import HttpFetch
from app.tools.net import BlockedUrl, HostPolicy, NameNotResolved
from tests.tools.receivers import Receiver, Reply, answer, redirect

REFUSED = [
    "10.0.0.1", "172.16.0.1", "192.168.1.1", "127.0.0.1", "127.0.0.2", "0.0.0.0",
    "169.254.169.254", "169.254.1.1", "100.64.0.1", "100.100.100.200", "198.18.0.1",
    "224.0.0.1", "240.0.0.1", "255.255.255.255",
    "::1", "::", "fd00::1", "fd00:ec2::254", "fe80::1", "fec0::1", "ff02::1",
    "::ffff:10.0.0.1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
    "64:ff9b::a00:1", "2002:a00:1::1", "::10.0.0.1",
]
PUBLIC = ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
METADATA = ["169.254.169.254", "fd00:ec2::254", "100.100.100.200", "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe"]


def policy(private: str = "false", hosts: tuple[str, ...] | None = None) -> HostPolicy:
    return HostPolicy(hosts=hosts, private=PrivateUrls.parse(private))


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def context(hosts: HostPolicy | None) -> ToolContext:
    return ToolContext(run_id="run_1", session_id="ses_1", owner="alice", tool_call_id="call_1",
                       hosts=hosts)


class Resolver:
    """Answers every name with `addresses` and records the names it was asked for."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append(host)
        return self.addresses


class Connections:
    """A transport factory that records what would have been sent, and sends nothing."""

    def __init__(self) -> None:
        self.opened = 0
        self.sent: list[httpx2.Request] = []

    def __call__(self) -> httpx2.AsyncBaseTransport:
        self.opened += 1

        def handle(request: httpx2.Request) -> httpx2.Response:
            self.sent.append(request)
            return httpx2.Response(200, text="sent")

        return httpx2.MockTransport(handle)


def address(text: str) -> net.IPAddress:
    return ipaddress.ip_address(text)


class TestAddressCheck:
    @pytest.mark.parametrize("ip", REFUSED)
    def test_non_public_addresses_are_refused_by_default(self, ip):
        refusal = policy().address_refusal("example.test", address(ip))
        assert refusal is not None
        assert str(address(ip)) in refusal

    @pytest.mark.parametrize("ip", PUBLIC)
    def test_public_addresses_pass(self, ip):
        assert policy().address_refusal("example.test", address(ip)) is None

    @pytest.mark.parametrize("ip", [ip for ip in REFUSED if ip not in METADATA
                                    and ip != "100.100.100.200"])
    def test_true_allows_every_private_address(self, ip):
        assert policy("true").address_refusal("example.test", address(ip)) is None

    @pytest.mark.parametrize("ip", METADATA)
    @pytest.mark.parametrize("allowed", ["true", "169.254.0.0/16,fd00::/8,100.64.0.0/10",
                                         "example.test", "64:ff9b::/96"])
    def test_metadata_addresses_are_always_refused(self, ip, allowed):
        refusal = policy(allowed).address_refusal("example.test", address(ip))
        assert refusal is not None
        assert "metadata" in refusal

    def test_a_listed_address_is_allowed_and_its_neighbour_is_not(self):
        guard = policy("127.0.0.1")
        assert guard.address_refusal("127.0.0.1", address("127.0.0.1")) is None
        assert guard.address_refusal("127.0.0.1", address("::ffff:127.0.0.1")) is None
        assert guard.address_refusal("127.0.0.2", address("127.0.0.2")) is not None
        assert guard.address_refusal("127.0.0.1", address("::1")) is not None

    def test_a_listed_network_allows_its_addresses(self):
        guard = policy("10.1.0.0/16, fd12:3456::/32")
        assert guard.address_refusal("a.test", address("10.1.200.3")) is None
        assert guard.address_refusal("a.test", address("fd12:3456::9")) is None
        assert guard.address_refusal("a.test", address("10.2.0.1")) is not None
        assert guard.address_refusal("a.test", address("fd12:3457::9")) is not None

    def test_a_listed_host_name_may_resolve_to_any_private_address(self):
        guard = policy("receiver.internal")
        assert guard.address_refusal("receiver.internal", address("10.9.8.7")) is None
        assert guard.address_refusal("Receiver.Internal.", address("127.0.0.2")) is None
        assert guard.address_refusal("other.internal", address("10.9.8.7")) is not None
        assert guard.address_refusal("x.receiver.internal", address("10.9.8.7")) is not None


class TestSetting:
    @pytest.mark.parametrize(("value", "everything"), [
        ("true", True), ("TRUE", True), ("1", True), ("false", False), ("", False),
        (True, True), (False, False)])
    def test_true_and_false_keep_their_meaning(self, value, everything):
        allowed = settings(allow_private_urls=value).allow_private_urls
        assert allowed.everything is everything
        assert bool(allowed) is everything
        assert allowed.admits("a.test", address("10.0.0.1")) is everything

    def test_a_list_of_hosts_and_networks(self, monkeypatch):
        monkeypatch.setenv("LOOMD_ALLOW_PRIVATE_URLS", "127.0.0.1, 10.1.0.0/16,receiver.internal")
        allowed = Settings(_env_file=None).allow_private_urls  # type: ignore[call-arg]
        assert not allowed.everything
        assert allowed.hosts == {"receiver.internal"}
        assert [str(n) for n in allowed.networks] == ["127.0.0.1/32", "10.1.0.0/16"]
        assert str(allowed) == "receiver.internal,127.0.0.1/32,10.1.0.0/16"

    @pytest.mark.parametrize("value", ["http://10.0.0.1/", "10.0.0.1:80", "a b"])
    def test_an_entry_that_is_no_host_or_network_is_a_settings_error(self, value):
        with pytest.raises(ValueError, match="neither a host name nor an address or network"):
            settings(allow_private_urls=value)

    def test_allowed_hosts_are_a_comma_separated_list(self, monkeypatch):
        monkeypatch.setenv("LOOMD_ALLOWED_HOSTS", "Example.com, *.api.test,,.other.org")
        assert Settings(_env_file=None).allowed_hosts == (  # type: ignore[call-arg]
            "example.com", "api.test", "other.org")
        monkeypatch.delenv("LOOMD_ALLOWED_HOSTS")
        assert settings().allowed_hosts == ()

    def test_an_allowed_host_with_a_path_is_a_settings_error(self):
        with pytest.raises(ValueError, match="not a host name"):
            settings(allowed_hosts="example.com/x")


class TestAllowedHosts:
    def test_without_either_list_any_host_is_admitted(self):
        assert HostPolicy.of(settings(), None).hosts is None
        assert HostPolicy.of(settings(), None).admits_host("anything.example")

    def test_an_empty_override_admits_nothing(self):
        hosts = HostPolicy.of(settings(allowed_hosts="example.com"), [])
        assert hosts.hosts == ()
        assert not hosts.admits_host("example.com")
        assert "may not use the network" in (hosts.host_refusal("example.com") or "")

    def test_no_override_keeps_the_operator_list(self):
        hosts = HostPolicy.of(settings(allowed_hosts="example.com"), None)
        assert hosts.admits_host("example.com")
        assert hosts.admits_host("api.example.com")
        assert not hosts.admits_host("badexample.com")
        assert not hosts.admits_host("example.com.evil.test")
        assert not hosts.admits_host("other.org")

    def test_an_override_without_an_operator_list_is_the_run_list(self):
        hosts = HostPolicy.of(settings(), ["API.Example.com.", "*.docs.test"])
        assert hosts.hosts == ("api.example.com", "docs.test")

    @pytest.mark.parametrize(("operator", "override", "expected"), [
        ("example.com", ["api.example.com"], ("api.example.com",)),
        ("api.example.com", ["example.com"], ("api.example.com",)),
        ("example.com,other.org", ["other.org", "x.example.com", "third.net"],
         ("x.example.com", "other.org")),
        ("example.com", ["other.org"], ()),
        ("example.com", ["com"], ("example.com",)),
        ("10.1.2.3", ["10.1.2.3", "2.3"], ("10.1.2.3",)),
    ])
    def test_an_override_is_intersected_with_the_operator_list(
        self, operator, override, expected,
    ):
        assert HostPolicy.of(settings(allowed_hosts=operator), override).hosts == expected

    def test_addresses_match_only_themselves(self):
        hosts = HostPolicy(hosts=("10.0.0.1",))
        assert hosts.admits_host("10.0.0.1")
        assert not hosts.admits_host("110.0.0.1")
        assert not HostPolicy(hosts=("0.1",)).admits_host("10.0.0.1")

    def test_the_private_setting_comes_along(self):
        hosts = HostPolicy.of(settings(allow_private_urls="127.0.0.1"), None)
        assert hosts.private.admits("127.0.0.1", address("127.0.0.1"))


class TestNamesRefusedBeforeResolving:
    @pytest.mark.parametrize(("guard", "host", "reason"), [
        (policy(hosts=("example.com",)), "other.org", "not among the hosts"),
        (policy(hosts=()), "example.com", "may not use the network"),
        (policy("true"), "metadata.google.internal", "metadata"),
        (policy("true"), "metadata", "metadata"),
        (policy(), "localhost", "local name"),
        (policy(), "api.localhost", "local name"),
    ])
    async def test_refused_without_asking_dns(self, guard, host, reason):
        resolver = Resolver("93.184.215.14")
        with pytest.raises(BlockedUrl, match=reason):
            await guard.addresses(host, 80, resolver)
        assert resolver.asked == []

    async def test_a_listed_local_name_is_resolved_and_allowed(self):
        resolver = Resolver("127.0.0.1")
        found = await policy("localhost").addresses("localhost", 80, resolver)
        assert found == [address("127.0.0.1")]


class TestConnectStep:
    @pytest.mark.parametrize("ip", REFUSED)
    async def test_a_name_resolving_to_a_refused_address_gets_no_connection(self, ip):
        connections = Connections()
        async with net.client(policy(), 5, resolver=Resolver(ip), connect=connections) as http:
            with pytest.raises(BlockedUrl, match=re.escape("a.example.test resolves to")):
                await http.get("https://a.example.test/x")
        assert (connections.opened, connections.sent) == (0, [])

    @pytest.mark.parametrize("ip", ["10.0.0.1", "[fd00::1]", "[::ffff:127.0.0.1]",
                                    "169.254.169.254"])
    async def test_a_refused_address_in_the_url_gets_no_connection(self, ip):
        connections = Connections()
        async with net.client(policy(), 5, resolver=Resolver(), connect=connections) as http:
            with pytest.raises(BlockedUrl):
                await http.get(f"http://{ip}/")
        assert (connections.opened, connections.sent) == (0, [])

    async def test_one_refused_address_among_public_ones_refuses_the_name(self):
        connections = Connections()
        resolver = Resolver("93.184.215.14", "10.0.0.1")
        async with net.client(policy(), 5, resolver=resolver, connect=connections) as http:
            with pytest.raises(BlockedUrl, match=re.escape("10.0.0.1")):
                await http.get("http://a.example.test/")
        assert connections.sent == []

    async def test_the_request_goes_to_the_checked_address_with_host_and_sni(self):
        connections = Connections()
        resolver = Resolver("93.184.215.14")
        async with net.client(policy(), 5, resolver=resolver, connect=connections) as http:
            response = await http.get("https://a.example.test:8443/x?y=1")
        assert response.text == "sent"
        [sent] = connections.sent
        assert str(sent.url) == "https://93.184.215.14:8443/x?y=1"
        assert sent.headers["host"] == "a.example.test:8443"
        assert sent.extensions["sni_hostname"] == "a.example.test"
        assert resolver.asked == ["a.example.test"]

    async def test_a_name_that_resolves_elsewhere_later_is_checked_again(self):
        connections = Connections()
        resolver = Resolver("93.184.215.14")
        async with net.client(policy(), 5, resolver=resolver, connect=connections) as http:
            await http.get("http://rebind.example.test/")
            resolver.addresses = ["127.0.0.1"]
            with pytest.raises(BlockedUrl, match=re.escape("127.0.0.1")):
                await http.get("http://rebind.example.test/")
        assert [str(r.url) for r in connections.sent] == ["http://93.184.215.14/"]

    async def test_each_host_gets_connections_of_its_own(self):
        connections = Connections()
        resolver = Resolver("93.184.215.14")
        async with net.client(policy(), 5, resolver=resolver, connect=connections) as http:
            await http.get("https://a.example.test/")
            await http.get("https://b.example.test/")
            await http.get("https://a.example.test/again")
        assert connections.opened == 2

    @pytest.mark.parametrize("answers", [[], ["not-an-address"]])
    async def test_no_usable_answer_is_a_dns_failure(self, answers):
        async with net.client(policy(), 5, resolver=Resolver(*answers),
                              connect=Connections()) as http:
            with pytest.raises(NameNotResolved):
                await http.get("http://a.example.test/")

    async def test_a_resolver_error_is_a_dns_failure(self):
        async def fail(host: str, port: int) -> Sequence[str]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        async with net.client(policy(), 5, resolver=fail, connect=Connections()) as http:
            with pytest.raises(NameNotResolved, match=r"could not resolve a\.example\.test"):
                await http.get("http://a.example.test/")


class TestCheckUrl:
    async def test_refuses_a_name_resolving_to_a_private_address(self):
        with pytest.raises(BlockedUrl, match="private"):
            await net.check_url(policy(), "https://a.example.test/", resolver=Resolver("10.0.0.1"))

    async def test_a_name_that_does_not_resolve_passes(self):
        async def fail(host: str, port: int) -> Sequence[str]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        await net.check_url(policy(), "https://a.example.test/", resolver=fail)

    async def test_with_everything_allowed_names_are_not_resolved_but_metadata_is_refused(self):
        resolver = Resolver("169.254.169.254")
        await net.check_url(policy("true"), "http://a.example.test/", resolver=resolver)
        assert resolver.asked == []
        with pytest.raises(BlockedUrl, match="metadata"):
            await net.check_url(policy("true"), "http://169.254.169.254/latest")
        with pytest.raises(BlockedUrl, match="metadata"):
            await net.check_url(policy("true"), "http://metadata.google.internal/")

    @pytest.mark.parametrize("url", ["ftp://example.com/x", "http://"])
    async def test_only_http_urls_with_a_host(self, url):
        with pytest.raises(BlockedUrl):
            await net.check_url(policy(), url, resolver=Resolver("93.184.215.14"))


FETCH = HttpFetch.name


class TestOverLoopback:
    """LOOMD_ALLOW_PRIVATE_URLS=127.0.0.1: a receiver on 127.0.0.2 must never be reached."""

    @pytest.fixture
    def hosts(self) -> HostPolicy:
        return HostPolicy.of(settings(allow_private_urls="127.0.0.1"), None)

    async def test_the_allowed_address_is_reached(self, hosts):
        async with Receiver(answer(Reply.text("hello")), host="127.0.0.1") as allowed:
            result = await HttpFetch().call({"url": allowed.url("/x")}, context(hosts))
        assert not result.is_error, result.output
        assert result.output.endswith("\n\nhello")
        assert [r.target for r in allowed.requests] == ["/x"]

    async def test_an_other_loopback_address_is_never_reached(self, hosts):
        async with Receiver(host="127.0.0.2") as forbidden:
            result = await HttpFetch().call({"url": forbidden.url("/x")}, context(hosts))
        assert result.is_error
        assert "127.0.0.2, a private address" in result.output
        assert forbidden.connections == 0

    async def test_a_name_resolving_to_it_is_refused(self, hosts):
        resolver = Resolver("127.0.0.2")
        async with Receiver(host="127.0.0.2") as forbidden:
            url = f"http://receiver.test:{forbidden.port}/x"
            result = await HttpFetch(resolver=resolver).call({"url": url}, context(hosts))
        assert result.is_error
        assert "receiver.test resolves to 127.0.0.2" in result.output
        assert resolver.asked == ["receiver.test"]
        assert forbidden.connections == 0

    async def test_a_redirect_to_it_is_refused(self, hosts):
        async with (
            Receiver(host="127.0.0.2") as forbidden,
            Receiver(redirect(forbidden.url("/secret")), host="127.0.0.1") as allowed,
        ):
            result = await HttpFetch().call({"url": allowed.url("/start")}, context(hosts))
        assert result.is_error
        assert "127.0.0.2" in result.output
        assert [r.target for r in allowed.requests] == ["/start"]
        assert forbidden.connections == 0

    async def test_a_redirect_to_a_name_resolving_to_it_is_refused(self, hosts):
        async def resolve(host: str, port: int) -> Sequence[str]:
            return ["127.0.0.2"]

        async with (
            Receiver(host="127.0.0.2") as forbidden,
            Receiver(redirect(f"http://inside.test:{forbidden.port}/"), host="127.0.0.1"
                     ) as allowed,
        ):
            result = await HttpFetch(resolver=resolve).call(
                {"url": allowed.url("/start")}, context(hosts))
        assert result.is_error
        assert "inside.test resolves to 127.0.0.2" in result.output
        assert len(allowed.requests) == 1
        assert forbidden.connections == 0

    async def test_a_listed_name_reaches_its_private_address(self):
        hosts = HostPolicy.of(settings(allow_private_urls="receiver.internal"), None)
        async with Receiver(answer(Reply.text("inside")), host="127.0.0.2") as receiver:
            url = f"http://receiver.internal:{receiver.port}/"
            result = await HttpFetch(resolver=Resolver("127.0.0.2")).call(
                {"url": url}, context(hosts))
        assert not result.is_error, result.output
        assert receiver.requests[0].headers["host"] == f"receiver.internal:{receiver.port}"

    async def test_the_mcp_client_factory_is_guarded_too(self, hosts):
        factory = net.mcp_client_factory(hosts)
        async with (
            Receiver(host="127.0.0.2") as forbidden,
            Receiver(answer(Reply.json({"ok": True})), host="127.0.0.1") as allowed,
            factory(headers={"X-Token": "t"}) as client,
        ):
            assert (await client.get(allowed.url("/mcp"))).json() == {"ok": True}
            with pytest.raises(BlockedUrl):
                await client.get(forbidden.url("/mcp"))
        assert allowed.requests[0].headers["x-token"] == "t"
        assert forbidden.connections == 0
