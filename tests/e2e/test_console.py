"""`loomd run`: a person chats with an agent from the terminal."""

from __future__ import annotations

from pathlib import Path

import httpx

from app.console import parse_sse
from tests.e2e.server import loomd_env, run_loomd, start_loomd

TOKEN = "console-admin-token"
AGENT = {
    "name": "calc", "model": "scripted:c",
    "tools": [{"type": "builtin", "name": "calculator"}],
    "provider_options": {"script": [
        {"tool_calls": [{"name": "calculator", "arguments": {"expression": "6*7"}}]},
        {"text": "The answer is 42."},
    ]},
}


def test_parse_sse_reads_data_frames_and_skips_comments_and_ids():
    lines = [": ping", "retry: 2000", "", "id: 1", "event: x", 'data: {"a": 1}', "",
             'data: {"b":', "data: 2}", ""]
    assert list(parse_sse(iter(lines))) == [{"a": 1}, {"b": 2}]


def test_run_streams_tools_and_text_then_continues_the_session(
    empty_database_url: str, tmp_path: Path
):
    env = loomd_env(LOOMD_DATABASE_URL=empty_database_url, LOOMD_ADMIN_TOKEN=TOKEN)
    server = start_loomd(tmp_path, env)
    try:
        server.wait_ready()
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.post(f"{server.base_url}/v1/agents", json=AGENT,
                          headers=headers).status_code == 201
        client_env = loomd_env(LOOMD_URL=server.base_url, LOOMD_TOKEN=TOKEN)
        first = run_loomd("run", "calc", "what is 6*7?", cwd=tmp_path, env=client_env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "→ calculator" in first.stdout and "← calculator: 42" in first.stdout
        assert "The answer is 42." in first.stdout
        assert "[completed: end_turn, 2 turn(s)" in first.stdout
        session = first.stderr.split("--session ", 1)[1].split(")", 1)[0]

        again = run_loomd("run", "calc", "and again?", "--session", session, cwd=tmp_path,
                          env=client_env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "echo: and again?" in again.stdout

        missing = run_loomd("run", "nope", "hi", cwd=tmp_path, env=client_env)
        assert missing.returncode == 1
        assert "404 not_found" in missing.stderr
    finally:
        assert server.stop(), server.log()


def test_unreachable_server_is_a_clear_error(tmp_path: Path):
    result = run_loomd("run", "calc", "hi", "--server", "http://127.0.0.1:9", cwd=tmp_path,
                       env=loomd_env())
    assert result.returncode == 1
    assert "cannot reach http://127.0.0.1:9" in result.stderr
