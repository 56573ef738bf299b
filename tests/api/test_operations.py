"""`GET /v1/providers`, `GET /metrics`, and deleting a session with a running run."""

from __future__ import annotations

import asyncio

import httpx

from app.main import create_app
from tests.conftest import client_for, lifespan_of, make_settings

SLEEPER = {
    "name": "sleeper", "model": "scripted:s",
    "tools": [{"type": "builtin", "name": "sleep"}],
    "provider_options": {"script": [
        {"tool_calls": [{"name": "sleep", "arguments": {"seconds": 30}}]}, {"text": "done"}]},
}


async def _running_run(admin: httpx.AsyncClient) -> dict:
    assert (await admin.post("/v1/agents", json=SLEEPER)).status_code == 201
    created = await admin.post("/v1/runs", json={"agent": "sleeper", "input": "nap"})
    assert created.status_code == 202, created.text
    run = created.json()
    for _ in range(200):
        events = (await admin.get(f"/v1/runs/{run['id']}/events",
                                  headers={"Accept": "application/json"})).json()["items"]
        if any(e["type"] == "tool.started" for e in events):
            return run
        await asyncio.sleep(0.02)
    raise AssertionError("the run never started its tool")


class TestProviders:
    async def test_lists_scripted_and_openai_with_their_status(self, admin):
        response = await admin.get("/v1/providers")
        assert response.status_code == 200
        items = {item["name"]: item for item in response.json()["items"]}
        assert items["scripted"]["status"] == "ok"
        assert items["openai"]["kind"] == "openai-compatible"
        assert items["openai"]["status"] in {"ok", "unreachable", "unauthorized", "unknown"}

    async def test_named_provider_from_settings_is_listed_and_probed(self, database_url):
        settings = make_settings(database_url, providers={
            "local": {"base_url": "http://127.0.0.1:9/v1"}})
        app = create_app(settings)
        async with lifespan_of(app), client_for(app, "test-admin-token") as admin:
            response = await admin.get("/v1/providers?refresh=true")
        local = next(i for i in response.json()["items"] if i["name"] == "local")
        assert local["base_url"] == "http://127.0.0.1:9/v1"
        assert local["status"] == "unreachable"

    async def test_needs_a_token(self, anonymous):
        assert (await anonymous.get("/v1/providers")).status_code == 401


class TestMetrics:
    async def test_exposes_run_gauges_and_histograms_without_a_token(self, anonymous):
        response = await anonymous.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        for name in ("loomd_runs_active", "loomd_runs_queued", "loomd_sse_clients",
                     "loomd_run_duration_seconds_bucket",
                     "loomd_llm_call_duration_seconds", "loomd_tool_call_duration_seconds"):
            assert name in response.text

    async def test_events_persisted_is_a_counter_named_total(self, admin, anonymous):
        await _running_run(admin)
        lines = (await anonymous.get("/metrics")).text.splitlines()
        assert "# TYPE loomd_events_persisted_total counter" in lines
        value = next(line for line in lines if line.startswith("loomd_events_persisted_total "))
        assert float(value.split()[1]) >= 1
        assert not any(line.startswith("loomd_events_persisted ") for line in lines)

    async def test_head_answers_like_get_without_a_body(self, anonymous):
        response = await anonymous.head("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert response.content == b""

    async def test_head_is_404_when_turned_off(self, database_url):
        app = create_app(make_settings(database_url, metrics_enabled=False))
        async with lifespan_of(app), client_for(app, None) as anonymous:
            response = await anonymous.head("/metrics")
        assert response.status_code == 404

    async def test_active_runs_gauge_counts_a_running_run(self, admin, anonymous):
        await _running_run(admin)
        text = (await anonymous.get("/metrics")).text
        assert "loomd_runs_active 1.0" in text

    async def test_can_be_turned_off(self, database_url):
        app = create_app(make_settings(database_url, metrics_enabled=False))
        async with lifespan_of(app), client_for(app, None) as anonymous:
            response = await anonymous.get("/metrics")
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"


class TestDeleteSessionWithRunningRun:
    async def test_is_session_busy_without_force(self, admin):
        run = await _running_run(admin)
        response = await admin.delete(f"/v1/sessions/{run['session_id']}")
        assert response.status_code == 409
        assert response.json()["active_run_id"] == run["id"]

    async def test_force_cancels_the_run_then_deletes_everything(self, admin):
        run = await _running_run(admin)
        response = await admin.delete(f"/v1/sessions/{run['session_id']}?force=true")
        assert response.status_code == 204
        assert (await admin.get(f"/v1/sessions/{run['session_id']}")).status_code == 404
        assert (await admin.get(f"/v1/runs/{run['id']}")).status_code == 404
        metrics = (await admin.get("/metrics")).text
        assert "loomd_runs_active 0.0" in metrics


class TestRunMetrics:
    async def test_finished_runs_llm_calls_and_tools_are_counted(self, admin, anonymous):
        agent = {"name": "calc", "model": "scripted:c",
                 "tools": [{"type": "builtin", "name": "calculator"}],
                 "provider_options": {"script": [
                     {"tool_calls": [{"name": "calculator", "arguments": {"expression": "1+1"}}]},
                     {"text": "2"}]}}
        assert (await admin.post("/v1/agents", json=agent)).status_code == 201
        run = (await admin.post("/v1/runs", json={"agent": "calc", "input": "1+1?"})).json()
        done = (await admin.get(f"/v1/runs/{run['id']}/wait?timeout_s=10")).json()
        assert done["status"] == "completed"
        text = (await anonymous.get("/metrics")).text
        assert 'loomd_runs_finished_total{status="completed"} 1.0' in text
        assert "loomd_run_duration_seconds_count 1.0" in text
        assert 'loomd_llm_call_duration_seconds_count{outcome="ok",provider="scripted"} 2.0' in text
        assert ('loomd_tool_call_duration_seconds_count{is_error="false",tool="calculator"} 1.0'
                in text)
