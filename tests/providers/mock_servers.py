"""Run the mock LLM servers `fakellm` and `llmock` as subprocesses on free loopback ports.

fakellm answers by YAML rules (scripted tool calls, argument fragments); llmock injects
faults, scripted over `POST /_llmock/scenario` (their quirks: design/TESTING.md). End-to-end
tests can reuse them: `start_fakellm(...)` / `start_llmock(...)` return a running `MockServer`.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
START_TIMEOUT_S = 20.0

FAKELLM_RULES = """\
version: 1
defaults: {fallback: deterministic_echo}
rules:
  - name: answer            # second call: the previous message is the assistant's tool call
    when: {tools_include: calculator, previous_message_role: assistant}
    respond: {content: "It is 5."}
  - name: call
    when: {tools_include: calculator}
    respond: {tool_calls: [{name: calculator, arguments: {expression: "2+3", precision: 2}}]}
  - name: greeting
    when: {messages_contain: "say hello"}
    respond: {content: "Hello there, how are you today?"}
"""
"""Rules for tests: a calculator tool call then its answer, and a fixed greeting."""


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class MockServer:
    """A mock server process; `api_url` is what an OpenAI client takes as `base_url`."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/v1"

    def log(self) -> str:
        """What the server printed so far (for failure messages)."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Terminate the process (kill it if it lingers)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _start(name: str, args: list[str], ready_path: str, workdir: Path) -> MockServer:
    """Start `name` on a free port and wait until `ready_path` answers 200."""
    last_error = ""
    for _attempt in range(3):  # another process may grab the port between pick and bind
        port = free_port()
        log_path = workdir / f"{name}-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [str(BIN / name), "serve", "--host", HOST, "--port", str(port), *args],
                cwd=workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        server = MockServer(name, port, process, log_path)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(server.url + ready_path, timeout=1).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        last_error = server.log()
        server.stop()
    raise RuntimeError(f"{name} did not start:\n{last_error}")


def start_fakellm(workdir: Path, rules: str = FAKELLM_RULES) -> MockServer:
    """Start `fakellm serve` with `rules` (YAML text) written into `workdir`."""
    config = workdir / "fakellm-rules.yaml"
    config.write_text(rules)
    return _start("fakellm", ["--config", str(config)], "/_fakellm/stats", workdir)


def start_llmock(workdir: Path, *extra_args: str) -> MockServer:
    """Start `llmock serve` (extra CLI flags, e.g. `--stream-chunk-delay-ms 5`, pass through)."""
    return _start("llmock", ["--log-level", "warning", *extra_args], "/health", workdir)


@contextlib.contextmanager
def running(start: Callable[..., MockServer], *args: Any) -> Iterator[MockServer]:
    """`with running(start_llmock) as server:` — a server for the block, in a temp dir."""
    with tempfile.TemporaryDirectory(prefix="mockllm-") as workdir:
        server = start(Path(workdir), *args)
        try:
            yield server
        finally:
            server.stop()


def llmock_reset(server: MockServer) -> None:
    """Forget llmock's queued behaviours and journaled requests."""
    httpx.post(server.url + "/_llmock/reset", timeout=5).raise_for_status()


def llmock_script(server: MockServer, *behaviors: dict[str, Any]) -> None:
    """Queue behaviours (`{"type": "fail", "status": 429, ...}`) for the next requests."""
    response = httpx.post(server.url + "/_llmock/scenario", json={"behaviors": list(behaviors)},
                          timeout=5)
    response.raise_for_status()


def llmock_requests(server: MockServer) -> list[dict[str, Any]]:
    """Every request llmock served since the last reset, oldest first, with its JSON body."""
    response = httpx.get(server.url + "/_llmock/requests", timeout=10)
    response.raise_for_status()
    return list(response.json()["requests"])


def fakellm_reset(server: MockServer) -> None:
    """Forget fakellm's per-conversation turn counters."""
    httpx.post(server.url + "/_fakellm/reset", timeout=5).raise_for_status()
