"""SDKs generated from the committed OpenAPI document build cleanly and work against loomd.

The Python client comes from `openapi-python-client` (a dev extra), the TypeScript types
from `openapi-typescript` (`npm ci --prefix tests/clients`). Both must generate with no
warning; the Python client then drives a whole flow against a real `loomd serve`.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.e2e.server import Server, loomd_env, start_loomd

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "openapi" / "openapi.json"
CLIENTS = ROOT / "tests" / "clients"
PYTHON_GENERATOR = Path(sys.executable).with_name("openapi-python-client")
TYPESCRIPT_BIN = CLIENTS / "node_modules" / ".bin"
PACKAGE = "loomd_client"
# An event type this version of the document does not know, as a later loomd may send.
LATER_EVENT = {"type": "run.frobbed", "seq": 9, "run_id": "run_x", "session_id": "ses_x",
               "ts": "2026-01-02T03:04:05.678Z", "data": {"anything": [1, 2]}}


def _run(*command: str | Path, cwd: Path) -> str:
    result = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True,
                            text=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The generated Python client, importable as `loomd_client`."""
    where = tmp_path_factory.mktemp("python-sdk")
    config = where / "config.yaml"
    config.write_text(f"package_name_override: {PACKAGE}\npost_hooks: []\n")
    output = _run(PYTHON_GENERATOR, "generate", "--path", DOCUMENT, "--meta", "none",
                  "--output-path", where / PACKAGE, "--config", config, cwd=where)
    assert "warning" not in output.lower(), output
    sys.path.insert(0, str(where))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(where))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def sdk_module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


def test_typescript_types_generate_without_warning_and_type_check(tmp_path: Path) -> None:
    if not (TYPESCRIPT_BIN / "openapi-typescript").exists():
        pytest.fail("the npm tools are missing: run `npm ci --prefix tests/clients`")
    output = _run(TYPESCRIPT_BIN / "openapi-typescript", DOCUMENT, "--output",
                  tmp_path / "loomd.ts", cwd=tmp_path)
    assert "warn" not in output.lower(), output
    (tmp_path / "use.ts").write_text(
        'import type { components, operations } from "./loomd";\n'
        'type Page = components["schemas"]["EventPage"];\n'
        'type Query = NonNullable<operations["runs-list_events"]["parameters"]["query"]>;\n'
        'const page: Page = {items: [], next_cursor: "7"};\n'
        'const next: Query = {cursor: page.next_cursor ?? undefined, limit: 50};\n'
        'const later: components["schemas"]["Event"] = ' f"{json.dumps(LATER_EVENT)};\n"
        "export const used = [next, later];\n")
    _run(TYPESCRIPT_BIN / "tsc", "--noEmit", "--strict", "--target", "es2022",
         "--module", "es2022", "--moduleResolution", "bundler", "use.ts", cwd=tmp_path)


def test_a_page_with_an_unknown_event_type_parses_it_as_unknown(sdk: ModuleType) -> None:
    models = sdk_module("models")
    known = {**LATER_EVENT, "type": "run.started", "data": {}}
    page = models.EventPage.from_dict({"items": [known, LATER_EVENT], "next_cursor": None})
    started, later = page.items
    assert isinstance(started, models.RunPhase)
    assert isinstance(later, models.UnknownEvent)
    assert later.type_ == "run.frobbed"
    assert later.data.additional_properties == {"anything": [1, 2]}


@pytest.fixture
def server(empty_database_url: str, tmp_path: Path) -> Iterator[Server]:
    """loomd in open mode (no admin token), on loopback."""
    server = start_loomd(tmp_path, loomd_env(LOOMD_DATABASE_URL=empty_database_url))
    try:
        server.wait_ready()
        yield server
    finally:
        assert server.stop(), server.log()


def test_a_generated_client_drives_a_whole_flow(sdk: ModuleType, server: Server) -> None:
    m = sdk_module("models")
    api = {name: sdk_module(f"api.{name.split('_', 1)[0]}.{name}") for name in (
        "auth_create_key", "auth_whoami", "agents_create", "sessions_create", "runs_create",
        "runs_wait", "runs_list_events", "runs_cancel", "runs_get")}

    # Open mode takes no token: the plain `Client` (an empty bearer token is no header).
    anonymous = sdk.Client(base_url=server.base_url, raise_on_unexpected_status=True)
    key = api["auth_create_key"].sync(client=anonymous, body=m.ApiKeyCreate(subject="alice"))
    assert isinstance(key, m.ApiKeyCreated)
    alice = sdk.AuthenticatedClient(base_url=server.base_url, token=key.key,
                                    raise_on_unexpected_status=True)
    assert api["auth_whoami"].sync(client=alice).subject == "alice"

    script = [m.ScriptStep(tool_calls=[m.ScriptToolCall(
                  name="calculator",
                  arguments=m.ScriptToolCallArguments.from_dict({"expression": "19*23"}))]),
              m.ScriptStep(text="19 * 23 = 437.")]
    unqualified = api["agents_create"].sync_detailed(client=alice, body=m.AgentCreate(
        name="calc", model="gpt-4o"))
    assert unqualified.status_code == 422
    assert isinstance(unqualified.parsed, m.ValidationProblem)
    assert "expected provider:model" in unqualified.parsed.detail

    agent = api["agents_create"].sync(client=alice, body=m.AgentCreate(
        name="calc", model="scripted:demo",
        tools=[m.BuiltinTool(type_="builtin", name=m.BuiltinToolName.CALCULATOR)],
        provider_options=m.ProviderOptions(script=script)))
    assert isinstance(agent, m.Agent), agent
    session = api["sessions_create"].sync(client=alice, body=m.SessionCreate(agent="calc"))
    assert isinstance(session, m.Session), session

    created = api["runs_create"].sync_detailed(
        session.id, client=alice, body=m.RunCreate(input_="19*23?"), idempotency_key="once")
    assert created.status_code == 202 and isinstance(created.parsed, m.Run)
    replayed = api["runs_create"].sync_detailed(
        session.id, client=alice, body=m.RunCreate(input_="19*23?"), idempotency_key="once")
    assert replayed.status_code == 200 and isinstance(replayed.parsed, m.Run)
    assert replayed.parsed.id == created.parsed.id

    run = api["runs_wait"].sync(created.parsed.id, client=alice, timeout_s=30)
    assert isinstance(run, m.Run)
    assert (run.status, run.stop_reason, run.output) == (
        m.RunStatus.COMPLETED, m.StopReason.END_TURN, "19 * 23 = 437.")

    events: list[Any] = []
    cursor: Any = sdk_module("types").UNSET
    while True:  # small pages, to follow `next_cursor`
        page = api["runs_list_events"].sync(run.id, client=alice, cursor=cursor, limit=4)
        assert isinstance(page, m.EventPage), page
        events.extend(page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert [event.seq for event in events] == list(range(1, run.last_seq + 1))
    assert not [event for event in events if isinstance(event, m.UnknownEvent)]
    by_type = {type(event): event for event in events}
    assert by_type[m.ToolCompleted].data.output == "437"
    calls = [e.data.message.tool_calls for e in events if isinstance(e, m.MessageCompleted)
             if isinstance(e.data.message.tool_calls, list)]
    assert isinstance(calls[0][0], m.ToolCall)
    assert calls[0][0].function.name == "calculator"
    assert isinstance(events[-1], m.RunCompleted)

    malformed = api["runs_list_events"].sync_detailed(run.id, client=alice, cursor="x")
    assert malformed.status_code == 400 and isinstance(malformed.parsed, m.Problem)

    missing = api["runs_get"].sync_detailed("run_missing", client=alice)
    assert missing.status_code == 404 and isinstance(missing.parsed, m.Problem)
    assert missing.parsed.code == "not_found"

    api["agents_create"].sync(client=alice, body=m.AgentCreate(
        name="slow", model="scripted:demo",
        provider_options=m.ProviderOptions(script=[m.ScriptStep(text="late", delay_ms=60_000)])))
    slow = api["sessions_create"].sync(client=alice, body=m.SessionCreate(agent="slow"))
    first = api["runs_create"].sync(slow.id, client=alice, body=m.RunCreate(input_="hi"))
    busy = api["runs_create"].sync_detailed(slow.id, client=alice, body=m.RunCreate(input_="hi"))
    assert busy.status_code == 409 and isinstance(busy.parsed, m.RunConflictProblem)
    assert (busy.parsed.code, busy.parsed.active_run_id) == ("session_busy", first.id)

    cancelled = api["runs_cancel"].sync(first.id, client=alice)  # no body
    assert isinstance(cancelled, m.CancelResult)
    assert cancelled.cancelled == 1
    ended = api["runs_wait"].sync(first.id, client=alice, timeout_s=30)
    assert ended.status == m.RunStatus.CANCELLED
    again = api["runs_cancel"].sync(first.id, client=alice, body=m.RunCancel(reason="twice"))
    assert again.cancelled == 0
    bare = httpx.post(f"{server.base_url}/v1/runs/{first.id}/cancel",
                      headers={"Authorization": f"Bearer {key.key}"})  # no body, no type
    assert (bare.status_code, bare.json()["cancelled"]) == (200, 0)
