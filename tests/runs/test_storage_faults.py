"""Runs when the database fails under them: nothing acknowledged is lost (issue 7, §2, §4).

A passing failure is retried until the storage deadline and then everything is stored; a
failure past the deadline stops the run, which ends `failed` with `storage_unavailable` once
the database is back, never `completed` with a missing event. On SQLite the failures are
injected behind the writer (`Writer.fault`); on Postgres the service's connections are also
terminated for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from app.runs.manager import RunManager
from tests.conftest import _TRUNCATE as TRUNCATE
from tests.conftest import ADMIN_TOKEN, PG_SERVER, postgres_url
from tests.e2e.server import free_port
from tests.runs.conftest import running_app
from tests.runs.helpers import Api, assert_gapless, of_type, step
from tests.runs.test_sse import event_of, frames

WORDS = 50
STORY = " ".join(f"word{i}" for i in range(WORDS))
OUTAGE_S = 0.5


def injected() -> sa_exc.OperationalError:
    """A passing failure, as the driver reports a lost connection or a locked database."""
    return sa_exc.OperationalError("INSERT", {}, Exception("injected"))


class Outage:
    """A `Writer.fault` failing every transaction while it is on, counting its refusals."""

    def __init__(self) -> None:
        self.until = 0.0
        self.refused = 0

    def start(self, seconds: float = float("inf")) -> None:
        self.until = time.monotonic() + seconds

    def stop(self) -> None:
        self.until = 0.0

    def __call__(self) -> None:
        if time.monotonic() < self.until:
            self.refused += 1
            raise injected()


def manager_of(app: FastAPI) -> RunManager:
    manager: RunManager = app.state.manager
    return manager


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[Api]:
    """`app` (its lifespan running) behind a real uvicorn, and an admin client of it."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20,
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
            yield Api(http)
    finally:
        server.should_exit = True
        await task


async def follow(api: Api, run_id: str) -> list[dict[str, Any]]:
    """Every event an SSE client following the run receives, until the stream ends."""
    async with api.client.stream("GET", f"/v1/runs/{run_id}/events",
                                 timeout=httpx.Timeout(20, read=30)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines()]
    return [event_of(frame) for frame in frames(iter(lines)) if "data" in frame]


async def eventually(condition: Callable[[], Awaitable[bool] | bool], timeout_s: float = 10,
                     what: str = "the condition") -> None:
    """Wait until `condition()` holds (fails the test after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = condition()
        if not isinstance(held, bool):
            held = await held
        if held:
            return
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s"
        await asyncio.sleep(0.01)


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(event["data"]["text"] for event in of_type(events, "message.delta"))


async def storyteller(api: Api, name: str = "storyteller", text: str = STORY,
                      chunk_delay_ms: int = 20) -> str:
    """A session of an agent that streams `text` a word at a time."""
    await api.agent(name, [step(text)], options={"chunk_delay_ms": chunk_delay_ms})
    return await api.session(name)


async def assert_usable(api: Api, session_id: str) -> None:
    """The session is not held by a run: it is idle and a new run on it completes."""
    session = await api.get_session(session_id)
    assert (session["status"], session["active_run_id"]) == ("idle", None), session
    again = await api.wait((await api.start(session_id, "again"))["id"])
    assert again["status"] == "completed", again


class TestPassingOutage:
    async def test_writes_failing_for_a_while_lose_nothing(self, database_url: str):
        outage = Outage()
        async with running_app(database_url, storage_deadline_s=10) as app, \
                serving(app) as api:
            manager_of(app).writer.fault = outage
            session_id = await storyteller(api)
            run_id = (await api.start(session_id, "tell"))["id"]
            followed = asyncio.create_task(follow(api, run_id))
            await api.until(run_id, "message.delta")
            outage.start(OUTAGE_S)

            run = await api.wait(run_id)
            seen = await followed
            events = await api.events(run_id)

        assert outage.refused > 0
        assert run["status"] == "completed", run
        assert_gapless(events)
        assert events[-1]["type"] == "run.completed"
        assert text_of(events) == STORY
        assert len(of_type(events, "message.delta")) == WORDS
        assert run["last_seq"] == len(events)
        assert seen == events


class TestLastingOutage:
    @pytest.mark.parametrize("end_stored", [True, False], ids=["end-stored", "end-recovered"])
    async def test_a_run_whose_writes_fail_past_the_deadline_fails(
        self, database_url: str, end_stored: bool
    ):
        outage = Outage()
        async with running_app(database_url, storage_deadline_s=0.5, run_lease_s=1.5) as app, \
                serving(app) as api:
            manager = manager_of(app)
            manager.writer.fault = outage
            session_id = await storyteller(api, chunk_delay_ms=10)
            run_id = (await api.start(session_id, "tell"))["id"]
            followed = asyncio.create_task(follow(api, run_id))
            await api.until(run_id, "message.delta")
            outage.start()
            await eventually(lambda: run_id in manager.writer.stats.stopped_runs,
                             what="the run's writes failing")
            if not end_stored:  # its end fails too: recovery ends it later
                await eventually(lambda: run_id in manager._abandoned,
                                 what="the run's end failing")
            assert (await api.get_run(run_id))["status"] == "running"
            outage.stop()

            run = await api.wait(run_id)
            seen = await followed
            events = await api.events(run_id)
            await assert_usable(api, session_id)

        assert run["status"] == "failed", run
        assert run["error"]["code"] == "storage_unavailable"
        assert_gapless(events)
        assert events[-1]["type"] == "run.failed"
        assert events[-1]["data"]["error"] == run["error"]
        assert run["last_seq"] == len(events)
        told = text_of(events)
        assert STORY.startswith(told) and told != STORY
        assert seen == events



def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "postgres_database_url" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--backend")
        metafunc.parametrize("postgres_backend", ["postgres"] if chosen != "sqlite" else [])


@pytest.fixture
def postgres_database_url(postgres_backend: str, request: pytest.FixtureRequest) -> str:
    """A migrated, empty Postgres database, for the outages only a server has."""
    name = request.getfixturevalue("postgres_database")
    asyncio.run(empty_postgres(name))
    return postgres_url(name)


async def empty_postgres(name: str) -> None:
    connection = await asyncpg.connect(f"postgresql://{PG_SERVER}/{name}")
    try:
        await connection.execute(TRUNCATE)
    finally:
        await connection.close()


class PostgresOutage:
    """Cuts the service off its Postgres database for real, from an admin connection."""

    def __init__(self, database_url: str) -> None:
        self.database = make_url(database_url).database
        self.terminated = 0
        self._admin: asyncpg.Connection | None = None

    async def __aenter__(self) -> PostgresOutage:
        self._admin = await asyncpg.connect(f"postgresql://{PG_SERVER}/postgres")
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._admin is not None
        try:
            await self.allow_connections()
        finally:
            await self._admin.close()

    async def terminate(self) -> None:
        """Terminate every connection to the database (the service's)."""
        assert self._admin is not None
        killed = await self._admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()", self.database)
        self.terminated += sum(1 for row in killed if row[0])

    async def terminate_for(self, seconds: float) -> None:
        """Terminate the service's connections again and again for `seconds`."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            await self.terminate()
            await asyncio.sleep(0.02)

    async def refuse_connections(self) -> None:
        """Terminate the connections and refuse new ones until `allow_connections`."""
        assert self._admin is not None
        await self._admin.execute(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS false')
        await self.terminate()

    async def allow_connections(self) -> None:
        assert self._admin is not None
        await self._admin.execute(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS true')


class TestPostgresOutage:
    async def test_connections_terminated_for_a_while_lose_nothing(
        self, postgres_database_url: str
    ):
        async with running_app(postgres_database_url, storage_deadline_s=10) as app, \
                serving(app) as api, PostgresOutage(postgres_database_url) as outage:
            session_id = await storyteller(api)
            run_id = (await api.start(session_id, "tell"))["id"]
            followed = asyncio.create_task(follow(api, run_id))
            await api.until(run_id, "message.delta")
            await outage.terminate_for(OUTAGE_S)

            run = await api.wait(run_id)
            seen = await followed
            events = await api.events(run_id)

        assert outage.terminated > 0
        assert manager_of(app).writer.stats.retries > 0
        assert run["status"] == "completed", run
        assert_gapless(events)
        assert text_of(events) == STORY
        assert run["last_seq"] == len(events)
        assert seen == events

    async def test_a_database_refusing_connections_past_the_deadline_fails_the_run(
        self, postgres_database_url: str
    ):
        async with running_app(postgres_database_url, storage_deadline_s=0.5,
                               run_lease_s=1.5) as app, \
                serving(app) as api, PostgresOutage(postgres_database_url) as outage:
            writer = manager_of(app).writer
            session_id = await storyteller(api, chunk_delay_ms=10)
            run_id = (await api.start(session_id, "tell"))["id"]
            followed = asyncio.create_task(follow(api, run_id))
            await api.until(run_id, "message.delta")
            await outage.refuse_connections()
            await eventually(lambda: run_id in writer.stats.stopped_runs,
                             what="the run's writes failing")
            await outage.allow_connections()

            run = await api.wait(run_id)
            seen = await followed
            events = await api.events(run_id)
            await assert_usable(api, session_id)

        assert outage.terminated > 0
        assert run["status"] == "failed", run
        assert run["error"]["code"] == "storage_unavailable"
        assert_gapless(events)
        assert events[-1]["type"] == "run.failed"
        told = text_of(events)
        assert STORY.startswith(told) and told != STORY
        assert seen == events
