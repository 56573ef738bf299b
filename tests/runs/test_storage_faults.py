"""Runs when the database fails under them: nothing acknowledged is lost.

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
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app.main import create_app
from app.runs.manager import RunManager
from app.runs.store import RUNS, SESSIONS
from tests.conftest import _TRUNCATE as TRUNCATE
from tests.conftest import (
    ADMIN_TOKEN,
    PG_SERVER,
    client_for,
    lifespan_of,
    make_settings,
    postgres_url,
)
from tests.e2e.server import free_port
from tests.runs.conftest import running_app
from tests.runs.helpers import Api, assert_gapless, of_type, step, types
from tests.runs.test_sse import event_of, frames

WORDS = 50
STORY = " ".join(f"word{i}" for i in range(WORDS))
OUTAGE_S = 0.5
GOOD = " ".join(f"a{i}" for i in range(40))
BAD = " ".join(["b0", "b1", "b2", "hold", "b4", "b5", "b6", "b7", "poison", "b9", "b10", "b11"])
"""The row of `poison` is refused; `hold` delays its batch so that another run's writes join
the bad row's batch."""


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


@contextlib.asynccontextmanager
async def admin_api(app: FastAPI) -> AsyncIterator[Api]:
    async with client_for(app, ADMIN_TOKEN) as client:
        yield Api(client)


async def stored_state(database_url: str, run_ids: list[str]
                       ) -> tuple[dict[str, str], dict[str, str]]:
    """The runs' statuses and their sessions' statuses, read straight from the database."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            runs = dict((await connection.execute(
                sa.select(RUNS.c.id, RUNS.c.status).where(RUNS.c.id.in_(run_ids)))).all())
            sessions = dict((await connection.execute(
                sa.select(SESSIONS.c.id, SESSIONS.c.status)
                .join(RUNS, RUNS.c.session_id == SESSIONS.c.id)
                .where(RUNS.c.id.in_(run_ids)))).all())
    finally:
        await engine.dispose()
    return runs, sessions


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


class Follower:
    """An SSE client following a run: the events it received so far, each as it came."""

    def __init__(self, api: Api, run_id: str) -> None:
        self.events: list[dict[str, Any]] = []
        self._task = asyncio.create_task(self._follow(api, run_id))

    async def _follow(self, api: Api, run_id: str) -> None:
        async with api.client.stream("GET", f"/v1/runs/{run_id}/events",
                                     timeout=httpx.Timeout(20, read=30)) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            frame: list[str] = []
            async for line in response.aiter_lines():
                frame.append(line)
                if not line:
                    self.events += [event_of(f) for f in frames(iter(frame)) if "data" in f]
                    frame = []

    async def received(self, type_: str) -> None:
        """Wait until an event of `type_` came (the stream has read the store by then)."""
        await eventually(lambda: type_ in types(self.events) or self._task.done(),
                         f"an SSE event {type_}")
        assert type_ in types(self.events), self._task

    async def everything(self) -> list[dict[str, Any]]:
        """Every event received once the stream ended."""
        await self._task
        return self.events


async def eventually(condition: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    """Wait until `condition()` holds (fails the test after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
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


def refused_row() -> sa_exc.IntegrityError:
    """What the database answers to a row it will never take."""
    return sa_exc.IntegrityError("INSERT", {}, Exception("injected: the row is refused"))


Transaction = Callable[[list[Any]], Awaitable[list[Any]]]


def around_transactions(monkeypatch: pytest.MonkeyPatch, writer: Any,
                        before: Callable[[list[Any]], Awaitable[None]]) -> None:
    """Await `before(writes)` ahead of each of the writer's transactions (it may raise)."""
    transaction: Transaction = writer._transaction

    async def instrumented(writes: list[Any]) -> list[Any]:
        await before(writes)
        return await transaction(writes)

    monkeypatch.setattr(writer, "_transaction", instrumented)


def delta_text(write: Any) -> str | None:
    event = write.event
    if event is None or event["type"] != "message.delta":
        return None
    return str(event["data"]["text"]).strip()


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


class TestPassingOutage:
    async def test_writes_failing_for_a_while_lose_nothing(self, database_url: str):
        outage = Outage()
        async with running_app(database_url, storage_deadline_s=10) as app, \
                serving(app) as api:
            manager_of(app).writer.fault = outage
            session_id = await storyteller(api)
            run_id = (await api.start(session_id, "tell"))["id"]
            follower = Follower(api, run_id)
            await follower.received("message.delta")
            outage.start(OUTAGE_S)

            run = await api.wait(run_id)
            seen = await follower.everything()
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
    @pytest.mark.parametrize("end_fails_too", [False, True],
                             ids=["back-at-once", "back-after-its-end-failed"])
    async def test_a_run_whose_writes_fail_past_the_deadline_fails(
        self, database_url: str, end_fails_too: bool
    ):
        outage = Outage()
        async with running_app(database_url, storage_deadline_s=0.5, run_lease_s=1.5) as app, \
                serving(app) as api:
            manager = manager_of(app)
            manager.writer.fault = outage
            session_id = await storyteller(api, chunk_delay_ms=10)
            run_id = (await api.start(session_id, "tell"))["id"]
            follower = Follower(api, run_id)
            await follower.received("message.delta")
            outage.start()
            await eventually(lambda: run_id in manager.writer.stats.stopped_runs,
                             what="the run's writes failing")
            if end_fails_too:  # then recovery ends it once the database is back
                await eventually(lambda: run_id in manager._abandoned,
                                 what="the run's end failing")
            assert (await api.get_run(run_id))["status"] == "running"
            outage.stop()

            run = await api.wait(run_id)
            seen = await follower.everything()
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


class TestRefusedRow:
    async def test_a_row_the_database_refuses_fails_only_its_run(
        self, database_url: str, monkeypatch: pytest.MonkeyPatch
    ):
        refused: list[set[str]] = []

        async def before(writes: list[Any]) -> None:
            texts = [delta_text(write) for write in writes]
            if "hold" in texts:
                await asyncio.sleep(0.1)
            if "poison" in texts:
                refused.append({write.run_id for write in writes})
                raise refused_row()

        async with running_app(database_url) as app, admin_api(app) as api:
            around_transactions(monkeypatch, manager_of(app).writer, before)
            good_session = await storyteller(api, "good", GOOD, chunk_delay_ms=10)
            bad_session = await storyteller(api, "bad", BAD, chunk_delay_ms=10)
            good_id = (await api.start(good_session, "tell"))["id"]
            bad_id = (await api.start(bad_session, "tell"))["id"]
            good, bad = await api.wait(good_id), await api.wait(bad_id)
            good_events, bad_events = await api.events(good_id), await api.events(bad_id)
            session = await api.get_session(bad_session)

        assert {good_id, bad_id} in refused, "the bad row was never in a batch with others"
        assert good["status"] == "completed", good
        assert_gapless(good_events)
        assert text_of(good_events) == GOOD
        assert good["last_seq"] == len(good_events)

        assert (bad["status"], bad["error"]["code"]) == ("failed", "internal_error"), bad
        assert_gapless(bad_events)
        assert bad_events[-1]["type"] == "run.failed"
        assert bad_events[-1]["data"]["error"] == bad["error"]
        assert text_of(bad_events) == BAD[:BAD.index("poison")]
        assert (session["status"], session["active_run_id"]) == ("idle", None), session


class TestClaimFailure:
    async def test_a_run_whose_claim_fails_ends_failed_once_the_database_is_back(
        self, database_url: str, monkeypatch: pytest.MonkeyPatch
    ):
        outage, claiming = Outage(), set[str]()

        async def before(writes: list[Any]) -> None:
            if claiming & {write.run_id for write in writes}:
                outage()

        # A long lease: the end is retried every second, not only with the lease renewal.
        async with running_app(database_url, storage_deadline_s=0.5, run_lease_s=30,
                               max_concurrent_runs=1) as app, admin_api(app) as api:
            writer = manager_of(app).writer
            around_transactions(monkeypatch, writer, before)
            busy_session = await storyteller(api, chunk_delay_ms=10)
            busy = (await api.start(busy_session, "tell"))["id"]
            await api.until(busy, "message.delta")
            await api.agent("short", [step("Fine.")])
            session_id = await api.session("short")
            outage.start()
            created = await api.start(session_id, "hi")  # claimed once the busy run ends
            assert created["status"] == "queued"
            claiming.add(created["id"])
            await eventually(lambda: created["id"] in writer.stats.stopped_runs,
                             "the run's claim failing")
            assert (await api.get_run(created["id"]))["status"] == "queued"
            outage.stop()

            run = await api.wait(created["id"], timeout_s=5)
            events = await api.events(created["id"])
            messages = await api.messages(session_id)
            await assert_usable(api, session_id)
            assert (await api.wait(busy))["status"] == "completed"

        assert outage.refused > 0
        assert (run["status"], run["error"]["code"]) == ("failed", "storage_unavailable"), run
        assert run["started_at"] is None
        assert types(events) == ["run.created", "run.failed"]
        assert_gapless(events)
        assert messages == []  # its input was to be stored with the claim


class TestShutdownRace:
    async def test_a_run_ending_while_queued_runs_are_interrupted_does_not_break_shutdown(
        self, database_url: str, monkeypatch: pytest.MonkeyPatch
    ):
        app = create_app(make_settings(database_url, max_concurrent_runs=1))
        lifespan = lifespan_of(app)
        await lifespan.__aenter__()
        shut_down = False
        try:
            manager = manager_of(app)
            async with admin_api(app) as api:
                await api.agent("quick", [step("Done.")])
                sessions = [await storyteller(api, chunk_delay_ms=10)]
                sessions += [await api.session("quick") for _ in range(4)]
                running = (await api.start(sessions[0], "tell"))["id"]
                await api.until(running, "message.delta")
                waiting = [(await api.start(session_id, "hi"))["id"]
                           for session_id in sessions[1:]]
            assert manager.queued_count == len(waiting)
            running_task = manager._tasks[running]

            ended_during_shutdown: list[bool] = []
            on_done, finish_unstarted = manager._on_done, manager._finish_unstarted

            def recording(run_id: str) -> None:
                if run_id == running:
                    ended_during_shutdown.append(not manager.accepting
                                                 and manager.queued_count > 0)
                on_done(run_id)

            async def once_the_running_run_ended(run_id: str, status: str, reason: str) -> bool:
                if run_id == waiting[1]:  # the running run ends while the others are interrupted
                    await running_task
                return await finish_unstarted(run_id, status, reason)

            monkeypatch.setattr(manager, "_on_done", recording)
            monkeypatch.setattr(manager, "_finish_unstarted", once_the_running_run_ended)
            shut_down = True
            await lifespan.__aexit__(None, None, None)
        finally:
            if not shut_down:
                await lifespan.__aexit__(None, None, None)

        assert ended_during_shutdown == [True], "the run did not end during the shutdown"
        assert manager._lease_task is not None and manager._lease_task.done()
        assert manager.writer._task is None
        runs, session_statuses = await stored_state(database_url, [running, *waiting])
        assert runs[running] == "completed"
        assert [runs[run_id] for run_id in waiting] == ["interrupted"] * len(waiting)
        assert set(session_statuses.values()) == {"idle"}

        async with running_app(database_url) as again, admin_api(again) as api:
            for session_id in sessions:
                await assert_usable(api, session_id)


class TestPostgresOutage:
    async def test_connections_terminated_for_a_while_lose_nothing(
        self, postgres_database_url: str
    ):
        async with running_app(postgres_database_url, storage_deadline_s=10) as app, \
                serving(app) as api, PostgresOutage(postgres_database_url) as outage:
            session_id = await storyteller(api)
            run_id = (await api.start(session_id, "tell"))["id"]
            follower = Follower(api, run_id)
            await follower.received("message.delta")
            await outage.terminate_for(OUTAGE_S)

            run = await api.wait(run_id)
            seen = await follower.everything()
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
            follower = Follower(api, run_id)
            await follower.received("message.delta")
            await outage.refuse_connections()
            await eventually(lambda: run_id in writer.stats.stopped_runs,
                             what="the run's writes failing")
            await outage.allow_connections()

            run = await api.wait(run_id)
            seen = await follower.everything()
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


class TestCreationDuringAnOutage:
    async def test_a_run_that_cannot_be_stored_is_refused_with_503_and_not_kept(
        self, database_url: str
    ):
        outage = Outage()
        async with running_app(database_url, storage_deadline_s=0.3) as app, \
                admin_api(app) as api:
            manager_of(app).writer.fault = outage
            session_id = await storyteller(api, "short", "Fine.")
            outage.start()
            response = await api.post_run(session_id, "hi")
            outage.stop()

            problem = response.json()
            session = await api.get_session(session_id)
            runs = (await api.client.get(f"/v1/sessions/{session_id}/runs")).json()["items"]
            await assert_usable(api, session_id)

        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert problem["code"] == "unavailable" and response.headers["retry-after"]
        assert runs == []
        assert (session["status"], session["active_run_id"]) == ("idle", None)
