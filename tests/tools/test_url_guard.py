"""Tool and hook URLs may not reach private addresses unless the operator allows it."""

import pytest

from app.config import PrivateUrls
from app.main import create_app
from app.tools.url_guard import PrivateUrl, check_public_url
from tests.conftest import ADMIN_TOKEN, client_for, lifespan_of, make_settings

PRIVATE = [
    "http://127.0.0.1/x", "http://localhost:8080/x", "http://api.localhost/x",
    "http://10.1.2.3/x", "http://192.168.0.10/x", "http://172.16.5.4/x",
    "http://169.254.169.254/latest/meta-data", "http://metadata.google.internal/x",
    "http://[::1]/x", "http://[fd00::1]/x", "http://[::ffff:127.0.0.1]/x", "http://0.0.0.0/x",
    "http://100.64.0.1/x",
]


class TestCheckPublicUrl:
    @pytest.mark.parametrize("url", PRIVATE)
    async def test_private_addresses_are_refused(self, url):
        with pytest.raises(PrivateUrl):
            await check_public_url(url)

    @pytest.mark.parametrize("url", ["https://93.184.215.14/x", "https://[2606:4700::1111]/"])
    async def test_public_addresses_pass(self, url):
        await check_public_url(url)

    async def test_a_name_that_does_not_resolve_now_is_checked_again_at_call_time(self):
        await check_public_url("https://does-not-resolve.invalid/x")

    async def test_a_listed_address_or_network_passes_and_others_do_not(self):
        allowed = PrivateUrls.parse("127.0.0.1,10.1.0.0/16")
        await check_public_url("http://127.0.0.1:9000/x", allowed)
        await check_public_url("http://10.1.2.3/x", allowed)
        for url in ("http://127.0.0.2/x", "http://10.2.0.1/x", "http://[::1]/x"):
            with pytest.raises(PrivateUrl):
                await check_public_url(url, allowed)

    @pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data",
                                     "http://[fd00:ec2::254]/", "http://metadata.google.internal/"])
    async def test_metadata_is_refused_even_when_everything_is_allowed(self, url):
        with pytest.raises(PrivateUrl, match="metadata"):
            await check_public_url(url, PrivateUrls(everything=True))


def _agent(url: str) -> dict:
    return {"name": "fetcher", "model": "scripted:x",
            "tools": [{"type": "http", "name": "lookup", "url": url},
                      {"type": "mcp", "server_url": url}]}


class TestAgentToolUrls:
    async def test_http_tool_on_a_private_address_is_a_validation_error(self, admin):
        response = await admin.post("/v1/agents", json=_agent("http://127.0.0.1:9000/hook"))
        assert response.status_code == 422
        assert response.json()["errors"][0]["loc"] == ["body", "tools", 0, "url"]
        assert "LOOMD_ALLOW_PRIVATE_URLS" in response.json()["detail"]

    async def test_patching_in_a_private_mcp_server_is_refused(self, admin):
        assert (await admin.post("/v1/agents", json={"name": "a", "model": "scripted:x"})
                ).status_code == 201
        response = await admin.patch("/v1/agents/a", json={"tools": [
            {"type": "mcp", "server_url": "http://169.254.169.254/mcp"}]})
        assert response.status_code == 422
        assert response.json()["errors"][0]["loc"] == ["body", "tools", 0, "server_url"]

    async def test_operator_may_allow_private_urls(self, database_url):
        app = create_app(make_settings(database_url, allow_private_urls=True))
        async with lifespan_of(app), client_for(app, ADMIN_TOKEN) as admin:
            response = await admin.post("/v1/agents", json=_agent("http://127.0.0.1:9000/x"))
        assert response.status_code == 201, response.text

    async def test_operator_may_allow_some_private_addresses(self, database_url):
        app = create_app(make_settings(database_url, allow_private_urls="127.0.0.1"))
        async with lifespan_of(app), client_for(app, ADMIN_TOKEN) as admin:
            allowed = await admin.post("/v1/agents", json=_agent("http://127.0.0.1:9000/x"))
            refused = await admin.post("/v1/agents", json={
                "name": "other", "model": "scripted:x",
                "tools": [{"type": "http", "name": "lookup", "url": "http://127.0.0.2:9000/x"}]})
        assert allowed.status_code == 201, allowed.text
        assert refused.status_code == 422
        assert refused.json()["errors"][0]["loc"] == ["body", "tools", 0, "url"]
        assert "127.0.0.2" in refused.json()["detail"]

    async def test_metadata_is_refused_although_private_urls_are_allowed(self, database_url):
        app = create_app(make_settings(database_url, allow_private_urls=True))
        async with lifespan_of(app), client_for(app, ADMIN_TOKEN) as admin:
            response = await admin.post(
                "/v1/agents", json=_agent("http://169.254.169.254/latest/meta-data"))
        assert response.status_code == 422
        assert "metadata" in response.json()["detail"]
