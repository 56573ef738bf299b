"""SQLite serves one process: the lock beside the file, and recovery after `kill -9`.

Every test here runs on a SQLite file (the lock guards SQLite only), a copy of the migrated
template, served by real `loomd serve` processes.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.main import create_app
from app.store.lock import DatabaseInUse
from tests.conftest import lifespan_of, make_settings
from tests.e2e.server import Server, free_port, loomd_env, run_loomd, start_loomd
from tests.runs.helpers import SLEEP, agent_body, calls, step

TOKEN = "crash-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
NAP_S = 5
"""The sleep a run is killed in: long enough to be in it, far below the 30 s lease."""


@pytest.fixture
def database(sqlite_template: Path, tmp_path: Path) -> Path:
    """A migrated, empty SQLite file of this test's own."""
    path = tmp_path / "loomd.db"
    shutil.copyfile(sqlite_template, path)
    return path


def serve_env(database: Path) -> dict[str, str]:
    return loomd_env(LOOMD_DATABASE_URL=f"sqlite+aiosqlite:///{database}",
                     LOOMD_ADMIN_TOKEN=TOKEN)


def serve(database: Path) -> Server:
    server = start_loomd(database.parent, serve_env(database))
    server.wait_ready()
    return server


def first_answer(server: Server, path: str, timeout: float = 30) -> httpx.Response:
    """The answer to the first request `server` accepts at all, sent as soon as it listens."""
    deadline = time.monotonic() + timeout
    while True:
        assert server.process.poll() is None, server.log()
        try:
            return httpx.get(f"{server.base_url}{path}", headers=ADMIN, timeout=10)
        except httpx.TransportError:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.01)


async def start_and_stop(application: FastAPI) -> None:
    async with lifespan_of(application):
        pass


def until_tool_started(http: httpx.Client, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        events = http.get(f"/v1/runs/{run_id}/events",
                          headers={"Accept": "application/json"}).json()["items"]
        started = [event for event in events if event["type"] == "tool.started"]
        if started:
            return started[0]
        assert time.monotonic() < deadline, events
        time.sleep(0.02)


class TestOneProcessPerFile:
    def test_a_second_serve_on_the_same_file_is_refused_while_the_first_serves(
        self, database: Path
    ):
        first = serve(database)
        try:
            with httpx.Client(base_url=first.base_url, headers=ADMIN, timeout=10) as http:
                created = http.post("/v1/agents", json=agent_body("echo", [step("Hi.")]))
                assert created.status_code == 201, created.text

                second = run_loomd("serve", "--host", "127.0.0.1", "--port", str(free_port()),
                                   cwd=database.parent, env=serve_env(database), timeout=30)
                assert second.returncode != 0
                assert str(database) in second.stderr
                assert f"{database}.lock" in second.stderr
                assert "in use" in second.stderr
                # Refused before migrating and before listening.
                assert "database schema is current" not in second.stderr
                assert "starting loomd" not in second.stderr

                assert http.get("/readyz").status_code == 200
                assert http.get("/v1/agents/echo").status_code == 200
        finally:
            assert first.stop(), first.log()

    def test_an_app_embedded_in_another_process_is_refused_too(self, database: Path):
        server = serve(database)
        try:
            application = create_app(make_settings(f"sqlite+aiosqlite:///{database}"))
            with pytest.raises(DatabaseInUse, match="in use"):
                asyncio.run(start_and_stop(application))
            assert httpx.get(f"{server.base_url}/readyz").status_code == 200
        finally:
            assert server.stop(), server.log()

    def test_a_clean_shutdown_releases_the_lock(self, database: Path):
        first = serve(database)
        assert first.stop(), first.log()
        assert first.process.returncode == -signal.SIGTERM

        second = serve(database)
        try:
            assert httpx.get(f"{second.base_url}/readyz").status_code == 200
        finally:
            assert second.stop(), second.log()


class TestKilledServer:
    def test_after_kill_9_a_restart_serves_at_once_with_the_run_interrupted(
        self, database: Path
    ):
        first = serve(database)
        try:
            with httpx.Client(base_url=first.base_url, headers=ADMIN, timeout=10) as http:
                created = http.post("/v1/agents", json=agent_body(
                    "napper", [calls(("sleep", {"seconds": NAP_S})), step("Slept.")], [SLEEP]))
                assert created.status_code == 201, created.text
                session_id = http.post("/v1/sessions", json={"agent": "napper"}).json()["id"]
                run = http.post(f"/v1/sessions/{session_id}/runs", json={"input": "nap"})
                assert run.status_code == 202, run.text
                run_id = run.json()["id"]
                call_id = until_tool_started(http, run_id)["data"]["tool_call_id"]
        finally:
            first.process.send_signal(signal.SIGKILL)
            first.process.wait()
        assert first.process.returncode == -signal.SIGKILL

        second = start_loomd(database.parent, serve_env(database))
        try:
            run = first_answer(second, f"/v1/runs/{run_id}")
            assert run.status_code == 200, run.text
            assert run.json()["status"] == "interrupted", run.json()
            session = first_answer(second, f"/v1/sessions/{session_id}")
            assert (session.json()["status"], session.json()["active_run_id"]) == (
                "pending", None)

            with httpx.Client(base_url=second.base_url, headers=ADMIN, timeout=10) as http:
                events = http.get(f"/v1/runs/{run_id}/events",
                                  headers={"Accept": "application/json"}).json()["items"]
                assert events[-1]["type"] == "run.interrupted"
                messages = http.get(f"/v1/sessions/{session_id}/messages").json()["items"]
                assert [m["role"] for m in messages] == ["user", "assistant"]
                refused = http.post(f"/v1/sessions/{session_id}/runs", json={"input": "hi"})
                assert refused.status_code == 409, refused.text
                assert refused.json()["code"] == "session_pending"
                assert [c["id"] for c in refused.json()["pending_tool_calls"]] == [call_id]
        finally:
            assert second.stop(), second.log()
