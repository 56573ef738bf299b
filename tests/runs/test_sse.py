"""Following runs over Server-Sent Events with a real `loomd serve` (§4.1, §4.3, §5)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import (
    BACKENDS,
    create_postgres_database,
    drop_postgres_database,
    postgres_url,
)
from tests.e2e.server import Server, loomd_env, start_loomd
from tests.runs.helpers import (
    CALCULATOR,
    SLEEP,
    agent_body,
    assert_gapless,
    assert_problem,
    calls,
    error,
    step,
)

TOKEN = "sse-admin-token"
STORY = " ".join(f"word{i}" for i in range(30))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "server_backend" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--backend")
        metafunc.parametrize("server_backend", BACKENDS if chosen == "all" else (chosen,),
                             scope="module")


@pytest.fixture(scope="module")
def server(server_backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server per backend for this module, on a database of its own."""
    workdir = tmp_path_factory.mktemp("sse")
    database = None
    if server_backend == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / 'loomd.db'}"
    else:
        database = create_postgres_database()
        url = postgres_url(database)
    env = loomd_env(LOOMD_DATABASE_URL=url, LOOMD_ADMIN_TOKEN=TOKEN,
                    LOOMD_LLM_RETRY_BASE_S="0.01")
    running = start_loomd(workdir, env)
    try:
        running.wait_ready()
        yield running
    finally:
        stopped = running.stop()
        if database is not None:
            drop_postgres_database(database)
        assert stopped, running.log()


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    """A client acting as a user of its own (so tests share no agents)."""
    with httpx.Client(base_url=server.base_url, timeout=10) as admin:
        key = admin.post("/v1/api-keys", json={"subject": f"u{uuid.uuid4().hex[:10]}"},
                         headers={"Authorization": f"Bearer {TOKEN}"})
        assert key.status_code == 201, key.text
    with httpx.Client(base_url=server.base_url, timeout=10,
                      headers={"Authorization": f"Bearer {key.json()['key']}"}) as client:
        yield client


def frames(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Parse SSE lines into frames: `id`, `event`, `data`, `retry`, `comments`."""
    frame: dict[str, Any] = {}
    for line in lines:
        if not line:
            if frame:
                yield frame
            frame = {}
        elif line.startswith(":"):
            frame.setdefault("comments", []).append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            frame[name] = f"{frame[name]}\n{value}" if name == "data" and name in frame else value
    if frame:
        yield frame


def event_of(frame: dict[str, Any]) -> dict[str, Any]:
    """The event a frame carries, checked against the frame's `id` and `event`."""
    event: dict[str, Any] = json.loads(frame["data"])
    assert frame["id"] == str(event["seq"])
    assert frame["event"] == event["type"]
    return event


def read_events(response: httpx.Response, stop_after: int | None = None) -> list[dict[str, Any]]:
    """Events of an SSE response until it ends (or `stop_after` events)."""
    events: list[dict[str, Any]] = []
    for frame in frames(response.iter_lines()):
        if "data" not in frame:
            continue
        events.append(event_of(frame))
        if stop_after is not None and len(events) >= stop_after:
            break
    return events


def create_agent(http: httpx.Client, name: str, script: list[dict[str, Any]],
                 tools: list[dict[str, Any]] | None = None, **fields: Any) -> None:
    response = http.post("/v1/agents", json=agent_body(name, script, tools, **fields))
    assert response.status_code == 201, response.text


def new_session(http: httpx.Client, agent: str) -> str:
    response = http.post("/v1/sessions", json={"agent": agent})
    assert response.status_code == 201, response.text
    session_id: str = response.json()["id"]
    return session_id


def json_events(http: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    response = http.get(f"/v1/runs/{run_id}/events", headers={"Accept": "application/json"})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def wait_for(http: httpx.Client, run_id: str) -> dict[str, Any]:
    response = http.get(f"/v1/runs/{run_id}/wait", params={"timeout_s": 10})
    assert response.status_code == 200, response.text
    run: dict[str, Any] = response.json()
    assert run["status"] not in ("queued", "running"), run
    return run


def follow(http: httpx.Client, run_id: str, **headers: str) -> list[dict[str, Any]]:
    with http.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return read_events(response)


class TestStreamingCreation:
    def test_stream_true_sends_the_runs_events_as_sse(self, http: httpx.Client):
        create_agent(http, "calc", [calls(("calculator", {"expression": "2+3"})),
                                    step("The answer is 5.")], [CALCULATOR])
        session_id = new_session(http, "calc")
        with http.stream("POST", f"/v1/sessions/{session_id}/runs",
                         json={"input": "2+3?", "stream": True}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            location = response.headers["content-location"]
            assert location.startswith("/v1/runs/run_")
            assert response.headers["x-request-id"]
            all_frames = list(frames(response.iter_lines()))

        assert all_frames[0]["retry"] == "2000"
        assert [f for f in all_frames if "retry" in f] == [all_frames[0]]
        events = [event_of(f) for f in all_frames if "data" in f]
        assert_gapless(events)
        assert events[-1]["type"] == "run.completed"
        run_id = location.rsplit("/", 1)[1]
        assert all(e["run_id"] == run_id and e["session_id"] == session_id for e in events)
        deltas = [e["data"]["text"] for e in events if e["type"] == "message.delta"]
        assert "".join(deltas) == "The answer is 5."
        assert json_events(http, run_id) == events
        run = http.get(location).json()
        assert (run["status"], run["last_seq"]) == ("completed", len(events))

    def test_one_shot_streaming(self, http: httpx.Client):
        create_agent(http, "hello", [step("Hi there.")])
        with http.stream("POST", "/v1/runs",
                         json={"agent": "hello", "input": "hi", "stream": True}) as response:
            assert response.status_code == 200
            events = read_events(response)
        assert events[0]["data"]["run"]["id"] == response.headers["content-location"].rsplit(
            "/", 1)[1]
        assert events[-1]["data"]["output"] == "Hi there."

    def test_a_failure_ends_the_stream_in_band(self, http: httpx.Client):
        create_agent(http, "broken", [error(400, "no such model")])
        session_id = new_session(http, "broken")
        with http.stream("POST", f"/v1/sessions/{session_id}/runs",
                         json={"input": "hi", "stream": True}) as response:
            assert response.status_code == 200
            events = read_events(response)
        assert events[-1]["type"] == "run.failed"
        assert events[-1]["data"]["error"]["code"] == "provider_error"
        assert "no such model" in events[-1]["data"]["error"]["detail"]

    def test_idempotent_replay_streams_the_run_from_the_start(self, http: httpx.Client):
        create_agent(http, "hello", [step("Hi there.")])
        session_id = new_session(http, "hello")
        body = {"input": "hi", "stream": True}
        headers = {"Idempotency-Key": "stream-once"}
        with http.stream("POST", f"/v1/sessions/{session_id}/runs", json=body,
                         headers=headers) as first:
            original = read_events(first)
        with http.stream("POST", f"/v1/sessions/{session_id}/runs", json=body,
                         headers=headers) as again:
            assert again.status_code == 200
            assert again.headers["idempotency-replayed"] == "true"
            assert again.headers["content-location"] == first.headers["content-location"]
            replayed = read_events(again)
        assert replayed == original
        assert len(http.get("/v1/runs").json()["items"]) == 1

    def test_an_interrupted_runs_stream_ends_with_run_cancelled(self, http: httpx.Client):
        create_agent(http, "napper", [calls(("sleep", {"seconds": 30})), step("New.")], [SLEEP])
        session_id = new_session(http, "napper")
        with http.stream("POST", f"/v1/sessions/{session_id}/runs",
                         json={"input": "nap", "stream": True}) as response:
            seen = []
            for frame in frames(response.iter_lines()):
                if "data" not in frame:
                    continue
                seen.append(event_of(frame))
                if seen[-1]["type"] == "tool.started":
                    other = http.post(f"/v1/sessions/{session_id}/runs",
                                      json={"input": "wake up", "if_busy": "interrupt"})
                    assert other.status_code == 202, other.text
        assert seen[-1]["type"] == "run.cancelled"
        assert seen[-1]["data"]["reason"] == f"interrupted by {other.json()['id']}"
        assert wait_for(http, other.json()["id"])["output"] == "New."


class TestResume:
    def test_reconnecting_with_last_event_id_misses_nothing(self, http: httpx.Client):
        create_agent(http, "storyteller", [step(STORY)], options={"chunk_delay_ms": 20})
        session_id = new_session(http, "storyteller")
        with http.stream("POST", f"/v1/sessions/{session_id}/runs",
                         json={"input": "tell", "stream": True}) as response:
            run_id = response.headers["content-location"].rsplit("/", 1)[1]
            head = read_events(response, stop_after=8)
        assert [e["seq"] for e in head] == list(range(1, 9))
        assert http.get(f"/v1/runs/{run_id}").json()["status"] == "running"

        tail = follow(http, run_id, **{"Last-Event-ID": "8"})

        events = head + tail
        assert_gapless(events)
        assert events[-1]["type"] == "run.completed"
        text = "".join(e["data"]["text"] for e in events if e["type"] == "message.delta")
        assert text == STORY
        assert json_events(http, run_id) == events

    def test_reconnecting_after_the_run_ended_replays_the_rest(self, http: httpx.Client):
        create_agent(http, "hello", [step("one two three four")])
        session_id = new_session(http, "hello")
        run_id = http.post(f"/v1/sessions/{session_id}/runs", json={"input": "x"}).json()["id"]
        wait_for(http, run_id)
        everything = json_events(http, run_id)

        assert follow(http, run_id) == everything
        assert follow(http, run_id, **{"Last-Event-ID": "3"}) == everything[3:]
        with http.stream("GET", f"/v1/runs/{run_id}/events", params={"after": 1},
                         headers={"Last-Event-ID": "5"}) as response:
            assert read_events(response) == everything[5:]
        with http.stream("GET", f"/v1/runs/{run_id}/events", params={"after": 2}) as response:
            assert read_events(response) == everything[2:]

    def test_a_cursor_at_or_past_the_terminal_event_is_204(self, http: httpx.Client):
        create_agent(http, "hello", [step("Hi.")])
        session_id = new_session(http, "hello")
        run_id = http.post(f"/v1/sessions/{session_id}/runs", json={"input": "x"}).json()["id"]
        last = wait_for(http, run_id)["last_seq"]
        for cursor in (last, last + 10):
            response = http.get(f"/v1/runs/{run_id}/events",
                                headers={"Last-Event-ID": str(cursor)})
            assert response.status_code == 204, response.text
            assert response.content == b""
        assert http.get(f"/v1/runs/{run_id}/events",
                        params={"after": last}).status_code == 204
        assert len(follow(http, run_id, **{"Last-Event-ID": str(last - 1)})) == 1

    def test_a_malformed_last_event_id_is_400(self, http: httpx.Client):
        create_agent(http, "hello", [step("Hi.")])
        session_id = new_session(http, "hello")
        run_id = http.post(f"/v1/sessions/{session_id}/runs", json={"input": "x"}).json()["id"]
        for cursor in ("abc", "-1", "1.5", "", "99999999999", "٣"):
            response = http.get(f"/v1/runs/{run_id}/events",
                                headers={"Last-Event-ID": cursor.encode()})
            assert_problem(response, 400, "bad_request")
        wait_for(http, run_id)


class TestAccessToken:
    def test_events_accept_the_token_as_a_query_parameter(
        self, http: httpx.Client, server: Server
    ):
        create_agent(http, "hello", [step("Hi.")])
        session_id = new_session(http, "hello")
        run_id = http.post(f"/v1/sessions/{session_id}/runs", json={"input": "x"}).json()["id"]
        wait_for(http, run_id)
        token = http.headers["authorization"].removeprefix("Bearer ")
        with httpx.Client(base_url=server.base_url, timeout=10) as browser:
            path = f"/v1/runs/{run_id}/events"
            with browser.stream("GET", path, params={"access_token": token}) as response:
                assert response.status_code == 200
                assert read_events(response) == json_events(http, run_id)
            assert_problem(browser.get(path), 401, "unauthorized")
            assert_problem(browser.get(path, params={"access_token": "lmd_wrong"}), 401,
                           "unauthorized")
            assert_problem(browser.get(f"/v1/runs/{run_id}", params={"access_token": token}),
                           401, "unauthorized")

    def test_another_users_token_does_not_reveal_the_run(
        self, http: httpx.Client, server: Server
    ):
        create_agent(http, "hello", [step("Hi.")])
        session_id = new_session(http, "hello")
        run_id = http.post(f"/v1/sessions/{session_id}/runs", json={"input": "x"}).json()["id"]
        other = httpx.post(f"{server.base_url}/v1/api-keys", json={"subject": "mallory"},
                           headers={"Authorization": f"Bearer {TOKEN}"}).json()["key"]
        response = httpx.get(f"{server.base_url}/v1/runs/{run_id}/events",
                             params={"access_token": other})
        assert_problem(response, 404, "not_found")
        wait_for(http, run_id)


class TestDisconnect:
    def test_on_disconnect_cancel_cancels_the_run(self, http: httpx.Client):
        create_agent(http, "napper", [calls(("sleep", {"seconds": 30}))], [SLEEP])
        session_id = new_session(http, "napper")
        with http.stream("POST", f"/v1/sessions/{session_id}/runs", json={
            "input": "nap", "stream": True, "on_disconnect": "cancel",
        }) as response:
            run_id = response.headers["content-location"].rsplit("/", 1)[1]
            for frame in frames(response.iter_lines()):
                if "data" in frame and event_of(frame)["type"] == "tool.started":
                    break

        run = wait_for(http, run_id)
        assert run["status"] == "cancelled"
        events = json_events(http, run_id)
        assert_gapless(events)
        assert events[-1]["data"]["reason"] == "the client disconnected"
        messages = http.get(f"/v1/sessions/{session_id}/messages").json()["items"]
        assert messages[-1]["content"] == "<cancelled: the client disconnected>"

    def test_by_default_the_run_outlives_the_connection(self, http: httpx.Client):
        create_agent(http, "napper", [calls(("sleep", {"seconds": 0.5})), step("Rested.")],
                     [SLEEP])
        session_id = new_session(http, "napper")
        with http.stream("POST", f"/v1/sessions/{session_id}/runs",
                         json={"input": "nap", "stream": True}) as response:
            run_id = response.headers["content-location"].rsplit("/", 1)[1]
            read_events(response, stop_after=3)
        started = time.monotonic()
        run = wait_for(http, run_id)
        assert run["status"] == "completed" and run["output"] == "Rested."
        assert time.monotonic() - started > 0.2


class TestRunStateStream:
    def _states(self, http: httpx.Client, collected: list[dict[str, Any]], ready: Any,
                done: Any, **params: str) -> None:
        with http.stream("GET", "/v1/runs/stream", params=params,
                         timeout=httpx.Timeout(10, read=15)) as response:
            assert response.status_code == 200
            for frame in frames(response.iter_lines()):
                if "retry" in frame:
                    ready.set()
                if frame.get("event") == "run.state":
                    collected.append(json.loads(frame["data"]))
                    if collected[-1]["status"] == "completed":
                        done.set()
                        return

    def test_dashboard_sees_queued_running_completed_of_its_own_runs(
        self, http: httpx.Client, server: Server
    ):
        collected: list[dict[str, Any]] = []
        ready, done = threading.Event(), threading.Event()
        reader = threading.Thread(target=self._states, args=(http, collected, ready, done),
                                  kwargs={"agent": "watched"}, daemon=True)
        reader.start()
        assert ready.wait(10)
        with httpx.Client(base_url=server.base_url, timeout=10,
                          headers={"Authorization": f"Bearer {TOKEN}"}) as admin:
            create_agent(admin, "watched", [step("admin's run")])
            admin_run = admin.post("/v1/runs", json={"agent": "watched", "input": "x"}).json()
            wait_for(admin, admin_run["id"])
        create_agent(http, "other", [step("not watched")])
        wait_for(http, http.post("/v1/runs", json={"agent": "other", "input": "x"}).json()["id"])
        create_agent(http, "watched", [step("watched")])
        run = http.post("/v1/runs", json={"agent": "watched", "input": "x"}).json()
        assert done.wait(10), collected
        reader.join(5)
        assert [s["status"] for s in collected] == ["queued", "running", "completed"]
        assert {s["run_id"] for s in collected} == {run["id"]}
        assert collected[-1]["stop_reason"] == "end_turn"
        assert set(collected[0]) == {"type", "run_id", "session_id", "agent", "status",
                                     "stop_reason", "ts"}
