"""A request body that stops arriving gets a 408 after `LOOMD_BODY_READ_TIMEOUT_S`.

Driven over raw sockets against a real `loomd serve`, since only a real connection can
send headers and then stall in the middle of the body.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.server import Server, loomd_env, start_loomd

TOKEN = "timeout-admin-token"
TIMEOUT_S = 0.5


@pytest.fixture
def server(empty_database_url: str, tmp_path: Path) -> Iterator[Server]:
    running = start_loomd(tmp_path, loomd_env(
        LOOMD_DATABASE_URL=empty_database_url, LOOMD_ADMIN_TOKEN=TOKEN,
        LOOMD_BODY_READ_TIMEOUT_S=str(TIMEOUT_S)))
    try:
        running.wait_ready()
        yield running
    finally:
        assert running.stop(), running.log()


def request_head(path: str, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: loomd.test", f"Authorization: Bearer {TOKEN}",
             "Content-Type: application/json", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawResponse:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.strip().lower(): v.strip()
                        for k, v in (line.split(":", 1) for line in lines)}

    def json(self) -> Any:
        return json.loads(self.body)


def send_in_parts(server: Server, *parts: bytes, pause_s: float = 0.0,
                  wait_s: float = 10.0) -> tuple[RawResponse, float]:
    """Send `parts` with `pause_s` between them, then read until the server closes.

    Sending stops early once the server answers. Returns the response and the seconds from
    the last part sent to the end of the response.
    """
    address = urlsplit(server.base_url)
    with socket.create_connection((address.hostname, address.port), timeout=wait_s) as sock:
        for index, part in enumerate(parts):
            if index and select.select([sock], [], [], pause_s)[0]:
                break
            sock.sendall(part)
        sent = time.monotonic()
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return RawResponse(received), time.monotonic() - sent


def assert_request_timeout(response: RawResponse) -> None:
    assert response.status == 408, response.body
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "request_timeout" and problem["status"] == 408
    assert problem["request_id"] == response.headers["x-request-id"]
    assert response.headers["connection"] == "close"


def test_a_body_shorter_than_its_content_length_times_out(server: Server):
    body = json.dumps({"subject": "alice"}).encode()
    response, waited = send_in_parts(
        server, request_head("/v1/api-keys", f"Content-Length: {len(body)}") + body[:5])
    assert_request_timeout(response)
    assert TIMEOUT_S <= waited < TIMEOUT_S + 5


def test_a_chunked_body_without_its_last_chunk_times_out(server: Server):
    response, waited = send_in_parts(
        server, request_head("/v1/api-keys", "Transfer-Encoding: chunked") + b"5\r\n{\"sub\r\n")
    assert_request_timeout(response)
    assert TIMEOUT_S <= waited < TIMEOUT_S + 5


def test_a_body_trickled_in_past_the_timeout_times_out(server: Server):
    body = json.dumps({"subject": "alice"}).encode()
    head = request_head("/v1/api-keys", f"Content-Length: {len(body)}")
    parts = [head, *(body[i:i + 1] for i in range(len(body)))]
    response, _ = send_in_parts(server, *parts, pause_s=TIMEOUT_S / 4)
    assert_request_timeout(response)


def test_a_body_that_arrives_in_time_is_served(server: Server):
    body = json.dumps({"subject": "alice"}).encode()
    head = request_head("/v1/api-keys", f"Content-Length: {len(body)}", "Connection: close")
    response, _ = send_in_parts(server, head, body[:5], body[5:], pause_s=TIMEOUT_S / 4)
    assert response.status == 201, response.body
    assert response.json()["subject"] == "alice"


def test_a_response_may_last_longer_than_the_body_timeout(server: Server):
    admin = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server.base_url, headers=admin, timeout=10) as http:
        created = http.post("/v1/agents", json={
            "name": "slow", "model": "scripted:x",
            "provider_options": {"script": [{"text": "one two three four five six"}],
                                 "chunk_delay_ms": 200}})
        assert created.status_code == 201, created.text
        session = http.post("/v1/sessions", json={"agent": "slow"}).json()["id"]
        started = time.monotonic()
        with http.stream("POST", f"/v1/sessions/{session}/runs",
                         json={"input": "hi", "stream": True}) as stream:
            assert stream.status_code == 200
            events = [line for line in stream.iter_lines() if line.startswith("event: ")]
    assert time.monotonic() - started > 2 * TIMEOUT_S
    assert events[-1] == "event: run.completed"
