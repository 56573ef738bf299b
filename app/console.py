"""`loomd run`: start a run on a loomd server and render its event stream in the terminal."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any, TextIO

import httpx

from app.events.types import is_terminal

DEFAULT_SERVER = "http://127.0.0.1:8080"


def parse_sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Decode `data:` payloads of a text/event-stream, one JSON event per frame."""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield json.loads("\n".join(data))
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield json.loads("\n".join(data))


class Renderer:
    """Writes events as a person wants to read them: text as it streams, tools, the end."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out, self.err = out, err
        self.mid_line = False

    def _line(self, text: str) -> None:
        if self.mid_line:
            self.out.write("\n")
            self.mid_line = False
        self.out.write(text + "\n")

    def render(self, event: dict[str, Any]) -> None:
        kind, data = event["type"], event["data"]
        if kind == "message.delta":
            self.out.write(data["text"])
            self.mid_line = not data["text"].endswith("\n")
        elif kind == "tool.started":
            self._line(f"→ {data['name']}({json.dumps(data['arguments'], ensure_ascii=False)})")
        elif kind == "tool.completed":
            mark = "✗" if data["is_error"] else "←"
            self._line(f"{mark} {data['name']}: {_short(data['output'])}")
        elif kind == "tool.denied":
            self._line(f"✗ {data['name']} denied by {data['by']}: {data.get('reason') or ''}")
        elif kind == "llm.retry":
            self._line(f"… retrying the model ({data['attempt']}/{data['max_attempts']}): "
                       f"{data['error']}")
        elif kind == "run.completed":
            usage = data.get("usage") or {}
            self._line(f"[completed: {data['stop_reason']}, {data['turns']} turn(s), "
                       f"{usage.get('total_tokens', 0)} tokens]")
        elif kind == "run.failed":
            self._line(f"[failed: {data['error']['code']}: {data['error']['detail']}]")
        elif kind in ("run.cancelled", "run.interrupted"):
            self._line(f"[{kind.split('.')[1]}: {data.get('reason')}]")
        self.out.flush()


class Terminated(BaseException):
    """SIGTERM while a run streams: handled like Ctrl-C (the run is cancelled)."""


def _terminate(_sig: int, _frame: FrameType | None) -> None:
    raise Terminated


def server_and_headers(server: str | None, token: str | None) -> tuple[str, dict[str, str]]:
    """The server URL (`--server`, `LOOMD_URL`) and the auth header (`--token`,
    `LOOMD_TOKEN`, `LOOMD_ADMIN_TOKEN`) the commands talk with."""
    base = (server or os.environ.get("LOOMD_URL") or DEFAULT_SERVER).rstrip("/")
    token = token or os.environ.get("LOOMD_TOKEN") or os.environ.get("LOOMD_ADMIN_TOKEN")
    return base, ({"Authorization": f"Bearer {token}"} if token else {})


def _short(text: str, limit: int = 200) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run_in_terminal(
    agent: str, prompt: str, session: str | None, server: str | None, token: str | None,
    out: TextIO = sys.stdout, err: TextIO = sys.stderr,
) -> int:
    """Start a streamed run and render it; 0 when it completed, 1 otherwise."""
    base, headers = server_and_headers(server, token)
    body: dict[str, Any] = {"input": prompt, "stream": True}
    path = f"/v1/sessions/{session}/runs" if session else "/v1/runs"
    if not session:
        body["agent"] = agent
    renderer = Renderer(out, err)
    status, session_id, run_id = "failed", session, None
    timeout = httpx.Timeout(10, read=None)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=timeout) as http, \
                http.stream("POST", path, json=body) as response:
            if response.status_code >= 400:
                response.read()
                problem = response.json() if response.content else {}
                err.write(f"loomd: {response.status_code} {problem.get('code', '')}: "
                          f"{problem.get('detail', response.text)}\n")
                return 1
            run_id = response.headers.get("content-location", "").rsplit("/", 1)[-1] or None
            try:
                for event in parse_sse(response.iter_lines()):
                    session_id = event.get("session_id", session_id)
                    renderer.render(event)
                    if is_terminal(event):
                        status = event["type"].split(".")[1]
            except (KeyboardInterrupt, Terminated) as stop:
                if in_main_thread:  # a second SIGTERM during the cancel ends at once
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                terminated = isinstance(stop, Terminated)
                if run_id:
                    reason = ("terminated (SIGTERM)" if terminated
                              else "interrupted from the terminal")
                    http.post(f"/v1/runs/{run_id}/cancel", json={"reason": reason})
                err.write("\nloomd: cancelled\n")
                return 128 + signal.SIGTERM if terminated else 130
    except httpx.HTTPError as exc:
        err.write(f"loomd: cannot reach {base}: {exc}\n")
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if session_id:
        err.write(f"session: {session_id} (continue with --session {session_id})\n")
    return 0 if status == "completed" else 1
