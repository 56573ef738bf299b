"""The `loomd` CLI against a real server: listing from the shell, and `loomd run` on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import LOOMD, Server, loomd_env, run_loomd, start_loomd

TOKEN = "e2e-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
NAP = {"tool_calls": [{"name": "sleep", "arguments": {"seconds": 30}}]}


@pytest.fixture
def server(empty_database_url: str, tmp_path: Path) -> Iterator[Server]:
    running = start_loomd(tmp_path, loomd_env(LOOMD_DATABASE_URL=empty_database_url,
                                              LOOMD_ADMIN_TOKEN=TOKEN))
    try:
        running.wait_ready()
        yield running
    finally:
        assert running.stop(), running.log()


def cli_env(server: Server) -> dict[str, str]:
    return loomd_env(LOOMD_URL=server.base_url, LOOMD_TOKEN=TOKEN)


def make_agent(http: httpx.Client, name: str, script: list[dict],
               tools: tuple[str, ...] = ()) -> None:
    response = http.post("/v1/agents", json={
        "name": name, "model": "scripted:demo", "provider_options": {"script": script},
        "tools": [{"type": "builtin", "name": tool} for tool in tools]})
    assert response.status_code == 201, response.text


class TestListing:
    def test_agents_sessions_and_runs_as_tables_and_json(self, server: Server, tmp_path: Path):
        with httpx.Client(base_url=server.base_url, headers=ADMIN, timeout=10) as http:
            make_agent(http, "greeter", [{"text": "Hello!"}])
            run = http.post("/v1/runs", json={"agent": "greeter", "input": "hi"}).json()
            done = http.get(f"/v1/runs/{run['id']}/wait", params={"timeout_s": 10}).json()
            assert done["status"] == "completed"

        agents = run_loomd("agents", cwd=tmp_path, env=cli_env(server))
        assert agents.returncode == 0, agents.stderr
        header, row = agents.stdout.splitlines()
        assert header.split() == ["NAME", "VERSION", "MODEL", "TOOLS", "OWNER", "UPDATED"]
        assert row.split()[:5] == ["greeter", "1", "scripted:demo", "0", "admin"]

        runs = run_loomd("runs", "--status", "completed", cwd=tmp_path, env=cli_env(server))
        assert runs.returncode == 0, runs.stderr
        [row] = runs.stdout.splitlines()[1:]
        assert row.split()[:3] == [run["id"], "greeter", "completed"]
        assert run_loomd("runs", "--status", "failed", cwd=tmp_path,
                         env=cli_env(server)).stdout == "no runs\n"

        sessions = run_loomd("sessions", "--json", cwd=tmp_path, env=cli_env(server))
        assert sessions.returncode == 0, sessions.stderr
        page = json.loads(sessions.stdout)
        assert [s["id"] for s in page["items"]] == [run["session_id"]]

    def test_a_refused_token_is_reported(self, server: Server, tmp_path: Path):
        env = {**cli_env(server), "LOOMD_TOKEN": "wrong"}
        result = run_loomd("agents", cwd=tmp_path, env=env)
        assert result.returncode == 1
        assert "401 unauthorized" in result.stderr


class TestRunOnSigterm:
    def test_sigterm_cancels_the_run_like_ctrl_c(self, server: Server, tmp_path: Path):
        with httpx.Client(base_url=server.base_url, headers=ADMIN, timeout=10) as http:
            make_agent(http, "napper", [NAP, {"text": "awake"}], ("sleep",))
            process = subprocess.Popen([LOOMD, "run", "napper", "nap"], cwd=tmp_path,
                                       env=cli_env(server), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
            try:
                assert process.stdout is not None
                assert process.stdout.readline().startswith("→ sleep(")  # inside the tool
                [run] = http.get("/v1/runs").json()["items"]
                assert run["status"] == "running"
                process.send_signal(signal.SIGTERM)
                _, stderr = process.communicate(timeout=15)
            finally:
                if process.poll() is None:
                    process.kill()
            assert process.returncode == 128 + signal.SIGTERM, stderr
            assert "cancelled" in stderr
            ended = http.get(f"/v1/runs/{run['id']}/wait", params={"timeout_s": 10}).json()
            assert ended["status"] == "cancelled"
            events = http.get(f"/v1/runs/{run['id']}/events",
                              headers={"Accept": "application/json"}).json()["items"]
            assert events[-1]["data"]["reason"] == "terminated (SIGTERM)"


