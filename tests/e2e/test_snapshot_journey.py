"""Pause a busy instance, snapshot it, export, import into a fresh instance on the other
database, restore: the paused run ends there exactly as an unpaused run ends (§11)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import create_postgres_database, drop_postgres_database, postgres_url
from tests.e2e.server import Server, loomd_env, start_loomd

TOKEN = "journey-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
SCRIPT = [
    {"tool_calls": [{"name": "sleep", "arguments": {"seconds": 0.6}}]},
    {"text": "now the sum", "tool_calls": [{"name": "calculator",
                                            "arguments": {"expression": "40+2"}}]},
    {"text": "the answer is 42"},
]
AGENT = {"name": "journey", "model": "scripted:journey", "provider_options": {"script": SCRIPT},
         "tools": [{"type": "builtin", "name": "sleep"}, {"type": "builtin", "name": "calculator"}]}


class Instance:
    """A real `loomd serve` on a database of its own."""

    def __init__(self, backend: str, workdir: Path) -> None:
        self.database: str | None = None
        if backend == "sqlite":
            url = f"sqlite+aiosqlite:///{workdir / 'loomd.db'}"
        else:
            self.database = create_postgres_database()
            url = postgres_url(self.database)
        self.server: Server = start_loomd(workdir, loomd_env(
            LOOMD_DATABASE_URL=url, LOOMD_ADMIN_TOKEN=TOKEN))
        self.server.wait_ready()
        self.http = httpx.Client(base_url=self.server.base_url, headers=ADMIN, timeout=30)

    def close(self) -> None:
        self.http.close()
        stopped = self.server.stop()
        if self.database is not None:
            drop_postgres_database(self.database)
        assert stopped, self.server.log()

    def call(self, method: str, path: str, status: int, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        assert response.status_code == status, (method, path, response.text)
        return response.json() if response.content else None

    def run_to_end(self, run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = self.call("GET", f"/v1/runs/{run_id}/wait", 200,
                                        params={"timeout_s": 20})
        assert run["status"] in ("completed", "failed", "cancelled"), run
        return run

    def events(self, run_id: str) -> list[dict[str, Any]]:
        page = self.call("GET", f"/v1/runs/{run_id}/events", 200,
                         headers={"Accept": "application/json"}, params={"limit": 200})
        items: list[dict[str, Any]] = page["items"]
        return items

    def until(self, run_id: str, type_: str) -> None:
        deadline = time.monotonic() + 10
        while type_ not in [event["type"] for event in self.events(run_id)]:
            assert time.monotonic() < deadline, type_
            time.sleep(0.02)


@pytest.fixture
def instances(tmp_path: Path) -> Iterator[list[Instance]]:
    started: list[Instance] = []
    yield started
    for instance in started:
        instance.close()


def messages(instance: Instance, session_id: str) -> list[tuple[Any, ...]]:
    page = instance.call("GET", f"/v1/sessions/{session_id}/messages", 200,
                         params={"limit": 200})
    return [(m["role"], m["content"], json.dumps(m.get("tool_calls")), m.get("tool_call_id"))
            for m in page["items"]]


@pytest.mark.parametrize(("source_backend", "target_backend"),
                         [("sqlite", "postgres"), ("postgres", "sqlite")])
def test_a_paused_run_resumes_on_another_instance_and_ends_as_it_would_have(
        source_backend: str, target_backend: str, tmp_path: Path,
        instances: list[Instance]) -> None:
    (tmp_path / "source").mkdir()
    (tmp_path / "target").mkdir()
    source = Instance(source_backend, tmp_path / "source")
    instances.append(source)
    source.call("POST", "/v1/agents", 201, json=AGENT)
    reference = source.call("POST", "/v1/runs", 202, json={"agent": "journey", "input": "sum?"})
    reference = source.run_to_end(reference["id"])
    assert (reference["status"], reference["output"]) == ("completed", "the answer is 42")

    run = source.call("POST", "/v1/runs", 202, json={"agent": "journey", "input": "sum?"})
    source.until(run["id"], "tool.started")
    paused = source.call("POST", "/v1/runtime/pause", 200, json={"timeout_ms": 10_000})
    assert paused["paused_runs"] == 1
    assert source.call("GET", f"/v1/runs/{run['id']}", 200)["status"] == "paused"
    meta = source.call("POST", "/v1/snapshots", 201, json={"label": "move",
                                                          "include_history": True})
    exported = source.http.get(f"/v1/snapshots/{meta['id']}/export")
    assert exported.status_code == 200
    assert exported.headers["etag"] == f'"{meta["sha256"]}"'
    envelope = json.loads(exported.content)
    canonical = json.dumps(envelope["sections"], sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False).encode()
    assert hashlib.sha256(canonical).hexdigest() == envelope["sha256"] == meta["sha256"]

    target = Instance(target_backend, tmp_path / "target")
    instances.append(target)
    imported = target.call("POST", "/v1/snapshots/import", 201, content=exported.content,
                           headers={"Content-Type": "application/json"})
    assert imported["sha256"] == meta["sha256"]
    restored = target.call("POST", f"/v1/snapshots/{imported['id']}/restore", 200,
                           json={"resume_runs": True})
    assert restored["resumed_runs"] == 1
    assert restored["created"]["runs"] == 2

    ended = target.run_to_end(run["id"])
    assert (ended["status"], ended["output"], ended["turns"]) == (
        "completed", reference["output"], reference["turns"])
    assert ended["usage"]["llm_calls"] == reference["usage"]["llm_calls"]
    events = target.events(run["id"])
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    kinds = [event["type"] for event in events]
    assert kinds[kinds.index("run.paused") + 1] == "run.resumed"
    assert kinds[-1] == "run.completed"
    assert messages(target, ended["session_id"]) == messages(source, reference["session_id"])

    again = target.call("POST", f"/v1/snapshots/{imported['id']}/restore", 200,
                        json={"resume_runs": True})
    assert again["resumed_runs"] == 0 and sum(again["created"].values()) == 0
    assert again["skipped"]["runs"] == 2
    assert source.call("GET", f"/v1/runs/{run['id']}", 200)["status"] == "paused"
