"""A run whose process died is `interrupted` at the next start-up (§4.2, §12)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.e2e.server import Server, loomd_env, start_loomd
from tests.runs import test_storage_faults
from tests.runs.helpers import SLEEP, agent_body, assert_gapless, calls, step

TOKEN = "recovery-admin-token"
LEASE_S = 1
QUICK_LEASE_S = 2.5
"""Longer than a server start, so the restarted server sees the lease still held."""
NAP_S = 1.5
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def serve(database_url: str, workdir: Path, lease_s: float = LEASE_S) -> Server:
    env = loomd_env(LOOMD_DATABASE_URL=database_url, LOOMD_ADMIN_TOKEN=TOKEN,
                    LOOMD_RUN_LEASE_S=str(lease_s))
    server = start_loomd(workdir, env)
    server.wait_ready()
    return server


def events_of(http: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    response = http.get(f"/v1/runs/{run_id}/events", headers={"Accept": "application/json"})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def until_tool_started(http: httpx.Client, run_id: str) -> None:
    deadline = time.monotonic() + 5
    while "tool.started" not in [e["type"] for e in events_of(http, run_id)]:
        assert time.monotonic() < deadline
        time.sleep(0.02)


class TestCrashRecovery:
    def test_a_killed_servers_run_is_interrupted_and_can_be_resumed(
        self, database_url: str, tmp_path: Path
    ):
        first = serve(database_url, tmp_path)
        try:
            with httpx.Client(base_url=first.base_url, headers=ADMIN, timeout=10) as http:
                created = http.post("/v1/agents", json=agent_body(
                    "napper", [calls(("sleep", {"seconds": NAP_S})), step("Slept well.")],
                    [SLEEP]))
                assert created.status_code == 201, created.text
                session_id = http.post("/v1/sessions", json={"agent": "napper"}).json()["id"]
                run = http.post(f"/v1/sessions/{session_id}/runs", json={"input": "nap"})
                assert run.status_code == 202, run.text
                run_id = run.json()["id"]
                until_tool_started(http, run_id)
                before = events_of(http, run_id)
        finally:
            first.process.kill()
            first.process.wait()
        killed_at = time.monotonic()
        assert first.process.returncode == -9

        time.sleep(max(0.0, LEASE_S + 0.3 - (time.monotonic() - killed_at)))
        second = serve(database_url, tmp_path)
        try:
            with httpx.Client(base_url=second.base_url, headers=ADMIN, timeout=10) as http:
                run = http.get(f"/v1/runs/{run_id}").json()
                assert run["status"] == "interrupted"
                assert run["ended_at"] is not None
                events = events_of(http, run_id)
                assert_gapless(events)
                assert events[:-1] == before
                assert events[-1]["type"] == "run.interrupted"
                assert events[-1]["data"]["reason"]
                assert run["last_seq"] == len(events)

                session = http.get(f"/v1/sessions/{session_id}").json()
                assert (session["status"], session["active_run_id"]) == ("pending", None)
                refused = http.post(f"/v1/sessions/{session_id}/runs", json={"input": "hi"})
                assert refused.status_code == 409
                assert refused.json()["code"] == "session_pending"
                assert [c["id"] for c in refused.json()["pending_tool_calls"]] == ["call_0_0"]

                resumed = http.post(f"/v1/sessions/{session_id}/runs",
                                    json={"input": "", "on_pending": "resume"})
                assert resumed.status_code == 202, resumed.text
                done = http.get(f"/v1/runs/{resumed.json()['id']}/wait",
                                params={"timeout_s": NAP_S + 10}).json()
                assert done["status"] == "completed", done
                assert done["output"] == "Slept well."
                messages = http.get(f"/v1/sessions/{session_id}/messages").json()["items"]
                assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
                assert messages[2]["content"] == "slept 1.5 s"
                assert http.get(f"/v1/sessions/{session_id}").json()["status"] == "idle"
        finally:
            assert second.stop(), second.log()

    def test_a_run_orphaned_by_a_quick_restart_is_interrupted_once_its_lease_ends(
        self, database_url: str, tmp_path: Path
    ):
        first = serve(database_url, tmp_path, QUICK_LEASE_S)
        try:
            with httpx.Client(base_url=first.base_url, headers=ADMIN, timeout=10) as http:
                created = http.post("/v1/agents", json=agent_body(
                    "napper", [calls(("sleep", {"seconds": 30})), step("Fine.")], [SLEEP]))
                assert created.status_code == 201, created.text
                session_id = http.post("/v1/sessions", json={"agent": "napper"}).json()["id"]
                run_id = http.post(f"/v1/sessions/{session_id}/runs",
                                   json={"input": "nap"}).json()["id"]
                until_tool_started(http, run_id)
        finally:
            first.process.kill()
            first.process.wait()
        killed_at = time.monotonic()

        second = serve(database_url, tmp_path, QUICK_LEASE_S)
        try:
            with httpx.Client(base_url=second.base_url, headers=ADMIN, timeout=10) as http:
                if database_url.startswith("sqlite"):
                    # The new process holds the file's lock: no other process runs it.
                    assert http.get(f"/v1/runs/{run_id}").json()["status"] == "interrupted"
                elif time.monotonic() - killed_at < QUICK_LEASE_S - 0.5:
                    # The lease still holds: a live process of another id could own the run.
                    assert http.get(f"/v1/runs/{run_id}").json()["status"] == "running"
                while (run := http.get(f"/v1/runs/{run_id}").json())["status"] == "running":
                    assert time.monotonic() - killed_at < 3 * QUICK_LEASE_S, run
                    time.sleep(0.05)
                assert run["status"] == "interrupted"
                events = events_of(http, run_id)
                assert_gapless(events)
                assert events[-1]["type"] == "run.interrupted"
                assert http.get(f"/v1/sessions/{session_id}").json()["status"] == "pending"
                aborted = http.post(f"/v1/sessions/{session_id}/runs",
                                    json={"input": "never mind", "on_pending": "abort"})
                assert aborted.status_code == 202, aborted.text
                done = http.get(f"/v1/runs/{aborted.json()['id']}/wait").json()
                assert (done["status"], done["output"]) == ("completed", "Fine.")
        finally:
            assert second.stop(), second.log()


POSTGRES_LEASE_S = 3
# The Postgres-only test's database, and the hook that gives it (unless --backend sqlite).
postgres_database_url = test_storage_faults.postgres_database_url
pytest_generate_tests = test_storage_faults.pytest_generate_tests


def launch(database_url: str, workdir: Path, instance_id: str,
           lease_s: float | None = None) -> Server:
    """Start a `loomd serve` of `instance_id` (with the default lease unless given)."""
    values = {"LOOMD_DATABASE_URL": database_url, "LOOMD_ADMIN_TOKEN": TOKEN,
              "LOOMD_INSTANCE_ID": instance_id}
    if lease_s is not None:
        values["LOOMD_RUN_LEASE_S"] = str(lease_s)
    return start_loomd(workdir, loomd_env(**values))


def napping_run(http: httpx.Client, agent: str) -> tuple[str, str]:
    """A new session's run, in the middle of a long `sleep` tool call: (session, run)."""
    created = http.post("/v1/agents", json=agent_body(
        agent, [calls(("sleep", {"seconds": 30})), step("Fine.")], [SLEEP]))
    assert created.status_code == 201, created.text
    session_id = http.post("/v1/sessions", json={"agent": agent}).json()["id"]
    run = http.post(f"/v1/sessions/{session_id}/runs", json={"input": "nap"})
    assert run.status_code == 202, run.text
    until_tool_started(http, run.json()["id"])
    return session_id, run.json()["id"]


def kill(server: Server) -> None:
    server.process.kill()
    server.process.wait()


def lease_held(database_url: str, run_id: str) -> bool:
    """Whether the run's lease is still running by the database's clock."""
    async def query() -> bool:
        connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
        try:
            return bool(await connection.fetchval(
                "SELECT lease_expires_at > now() FROM runs WHERE id = $1", run_id))
        finally:
            await connection.close()

    return asyncio.run(query())


def assert_interrupted(http: httpx.Client, run_id: str, session_id: str) -> None:
    run = http.get(f"/v1/runs/{run_id}").json()
    assert run["status"] == "interrupted", run
    events = events_of(http, run_id)
    assert_gapless(events)
    assert events[-1]["type"] == "run.interrupted"
    session = http.get(f"/v1/sessions/{session_id}").json()
    assert (session["status"], session["active_run_id"]) == ("pending", None), session


class TestRestartOnPostgres:
    def test_a_restart_takes_its_own_runs_over_at_once_and_another_ids_after_the_lease(
        self, postgres_database_url: str, tmp_path: Path
    ):
        url = postgres_database_url
        first = launch(url, tmp_path, "node-a")
        # A process of another instance id beside them all along: as far as it knows, a
        # run of node-a may be executing until the run's lease ends.
        other = launch(url, tmp_path, "node-b", POSTGRES_LEASE_S)
        second: Server | None = None
        try:
            first.wait_ready()
            other.wait_ready()
            with httpx.Client(base_url=first.base_url, headers=ADMIN, timeout=10) as http:
                own_session, own_run = napping_run(http, "napper")
            kill(first)

            # The same instance id: the run is its own, whatever its 30 s lease says.
            second = launch(url, tmp_path, "node-a", POSTGRES_LEASE_S)
            second.wait_ready()
            with httpx.Client(base_url=second.base_url, headers=ADMIN, timeout=10) as http:
                assert_interrupted(http, own_run, own_session)
                other_session, other_run = napping_run(http, "other-napper")
            kill(second)
            killed_at = time.monotonic()

            with httpx.Client(base_url=other.base_url, headers=ADMIN, timeout=10) as http:
                first_seen = http.get(f"/v1/runs/{other_run}").json()["status"]
                assert lease_held(url, other_run), "the lease ended before the first request"
                assert first_seen == "running"
                while http.get(f"/v1/runs/{other_run}").json()["status"] == "running":
                    assert time.monotonic() - killed_at < 3 * POSTGRES_LEASE_S
                    time.sleep(0.05)
                assert not lease_held(url, other_run)
                assert_interrupted(http, other_run, other_session)
        finally:
            for server in (first, second):
                if server is not None:
                    kill(server)
            assert other.stop(), other.log()
