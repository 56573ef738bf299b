"""`loomd` as a user runs it: a real process on a loopback port, driven over HTTP."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app import __version__
from tests.e2e.server import Server, loomd_env, run_loomd, start_loomd

TOKEN = "e2e-admin-token"
COMMITTED_OPENAPI = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A working directory that is not the repository: loomd must not depend on it."""
    path = tmp_path / "elsewhere"
    path.mkdir()
    return path


@pytest.fixture
def server(empty_database_url: str, workdir: Path) -> Iterator[Server]:
    env = loomd_env(LOOMD_DATABASE_URL=empty_database_url, LOOMD_ADMIN_TOKEN=TOKEN)
    running = start_loomd(workdir, env)
    try:
        running.wait_ready()
        yield running
    finally:
        assert running.stop(), running.log()


class TestServe:
    def test_walk_through_over_real_http(self, server: Server):
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            admin = {"Authorization": f"Bearer {TOKEN}"}
            created = http.post("/v1/api-keys", json={"subject": "alice"}, headers=admin)
            assert created.status_code == 201
            alice = {"Authorization": f"Bearer {created.json()['key']}"}

            agent = http.post("/v1/agents", headers=alice, json={
                "name": "support", "model": "scripted:demo", "instructions": "Be brief.",
                "provider_options": {"script": [{"text": "Hello!"}]},
            })
            assert agent.status_code == 201, agent.text
            session = http.post("/v1/sessions", headers=alice,
                                json={"agent": "support", "title": "first"})
            assert session.status_code == 201
            session_id = session.json()["id"]

            appended = http.post(f"/v1/sessions/{session_id}/messages", headers=alice,
                                 json={"messages": [{"role": "user", "content": "hi"}]})
            assert appended.status_code == 201
            assert [m["seq"] for m in appended.json()["items"]] == [1]

            sessions = http.get("/v1/sessions", headers=alice).json()
            assert [s["id"] for s in sessions["items"]] == [session_id]
            assert sessions["items"][0]["message_count"] == 1
            assert http.get("/v1/agents", headers=alice).json()["items"][0]["name"] == "support"
            assert http.get("/v1/whoami", headers=alice).json()["subject"] == "alice"

            other = http.post("/v1/api-keys", json={"subject": "bob"}, headers=admin).json()
            bob = {"Authorization": f"Bearer {other['key']}"}
            assert http.get(f"/v1/sessions/{session_id}", headers=bob).status_code == 404

    def test_every_response_has_a_request_id_and_errors_are_problem_json(self, server: Server):
        response = httpx.get(f"{server.base_url}/v1/agents")
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["request_id"] == response.headers["x-request-id"]

    def test_logs_are_json_lines_with_request_ids(self, server: Server):
        response = httpx.get(f"{server.base_url}/healthz", headers={"X-Request-ID": "trace-42"})
        assert response.headers["x-request-id"] == "trace-42"
        server.stop()
        lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
        access = [line for line in lines if line.get("logger") == "loomd.access"
                  and line.get("request_id") == "trace-42"]
        assert len(access) == 1
        assert access[0]["path"] == "/healthz" and access[0]["status"] == 200

    def test_served_openapi_equals_committed_file(self, server: Server):
        served = httpx.get(f"{server.base_url}/openapi.json").json()
        assert served == json.loads(COMMITTED_OPENAPI.read_text())


class TestShutdown:
    def test_sigterm_ends_open_event_streams_as_complete_responses(
        self, empty_database_url: str, workdir: Path
    ):
        env = loomd_env(LOOMD_DATABASE_URL=empty_database_url, LOOMD_ADMIN_TOKEN=TOKEN,
                        LOOMD_SHUTDOWN_GRACE_S="1")
        server = start_loomd(workdir, env)
        try:
            server.wait_ready()
            admin = {"Authorization": f"Bearer {TOKEN}"}
            with httpx.Client(base_url=server.base_url, headers=admin, timeout=10) as http:
                agent = http.post("/v1/agents", json={
                    "name": "napper", "model": "scripted:demo",
                    "tools": [{"type": "builtin", "name": "sleep"}],
                    "provider_options": {"script": [{"tool_calls": [
                        {"name": "sleep", "arguments": {"seconds": 30}}]}]}})
                assert agent.status_code == 201, agent.text
                run = http.post("/v1/runs", json={"agent": "napper", "input": "nap"}).json()
                frames: list[str] = []
                with http.stream("GET", f"/v1/runs/{run['id']}/events",
                                 headers={"Accept": "text/event-stream"}) as stream:
                    for line in stream.iter_lines():
                        frames.append(line)
                        if line == "event: tool.started":
                            server.process.send_signal(signal.SIGTERM)
                # The loop ended: the response was complete (a torn one raises here).
            assert "event: tool.started" in frames
        finally:
            stopped = server.stop()
        log = server.log()
        assert stopped, log
        assert "ASGI callable returned without completing response" not in log
        assert "Cancel 1 running task(s)" not in log


class TestStartupChecks:
    def test_refuses_an_outdated_schema_when_auto_migration_is_off(
        self, empty_database_url: str, workdir: Path
    ):
        env = loomd_env(LOOMD_DATABASE_URL=empty_database_url, LOOMD_ADMIN_TOKEN=TOKEN,
                        LOOMD_AUTO_MIGRATE="false")
        server = start_loomd(workdir, env)
        code = server.process.wait(timeout=30)
        assert code != 0
        assert "loomd migrate" in server.log()

    def test_migrate_then_serve_without_auto_migration(
        self, empty_database_url: str, workdir: Path
    ):
        env = loomd_env(LOOMD_DATABASE_URL=empty_database_url, LOOMD_ADMIN_TOKEN=TOKEN,
                        LOOMD_AUTO_MIGRATE="false")
        assert run_loomd("migrate", cwd=workdir, env=env).returncode == 0
        server = start_loomd(workdir, env)
        try:
            server.wait_ready()
        finally:
            assert server.stop(), server.log()

    def test_open_mode_is_refused_on_a_public_bind_address(
        self, empty_database_url: str, workdir: Path
    ):
        env = loomd_env(LOOMD_DATABASE_URL=empty_database_url)
        result = run_loomd("serve", "--host", "0.0.0.0", "--port", "1", cwd=workdir, env=env)
        assert result.returncode == 2
        assert "LOOMD_ADMIN_TOKEN" in result.stderr


class TestCommandLine:
    def test_version(self, tmp_path: Path):
        result = run_loomd("--version", cwd=tmp_path, env=loomd_env())
        assert result.stdout.strip() == f"loomd {__version__}"

    def test_help_lists_the_commands(self, tmp_path: Path):
        result = run_loomd("--help", cwd=tmp_path, env=loomd_env())
        assert result.returncode == 0
        for command in ("serve", "migrate", "openapi"):
            assert command in result.stdout

    def test_openapi_prints_the_committed_document(self, tmp_path: Path):
        result = run_loomd("openapi", cwd=tmp_path, env=loomd_env())
        assert json.loads(result.stdout) == json.loads(COMMITTED_OPENAPI.read_text())

    def test_invalid_setting_is_a_clear_error(self, tmp_path: Path):
        result = run_loomd("serve", cwd=tmp_path, env=loomd_env(LOOMD_PORT="not-a-port"))
        assert result.returncode == 2
        assert "port" in result.stderr.lower()
