"""Event hooks across a restart of `loomd serve`: a receiver that is down for a while gets
every event, in order, once it is back, with the same `webhook-id` on every attempt."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from tests.e2e.server import Server, loomd_env, start_loomd
from tests.runs.helpers import CALCULATOR, agent_body, calls, step
from tests.tools.receivers import Received, Receiver, Reply

TOKEN = "hooks-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
EVENTS = ["run.created", "tool.completed", "run.completed"]


async def serve(database_url: str, workdir: Path) -> Server:
    server = start_loomd(workdir, loomd_env(
        LOOMD_DATABASE_URL=database_url, LOOMD_ADMIN_TOKEN=TOKEN,
        LOOMD_ALLOW_PRIVATE_URLS="127.0.0.1", LOOMD_HOOK_MAX_ATTEMPTS="20"))
    await asyncio.to_thread(server.wait_ready)
    return server


class Inbox:
    def __init__(self) -> None:
        self.secret = ""
        self.failing = True
        self.attempted: list[str] = []
        self.delivered: list[tuple[str, dict[str, Any]]] = []
        self.receiver = Receiver(self.handle)

    async def handle(self, request: Received) -> Reply:
        payload = Webhook(self.secret).verify(request.body, request.headers)
        message_id = request.headers["webhook-id"]
        self.attempted.append(message_id)
        if self.failing:
            return Reply.text("down", status=503)
        self.delivered.append((message_id, payload["event"]))
        return Reply(204)


async def test_every_event_arrives_in_order_across_a_restart(empty_database_url: str,
                                                             tmp_path: Path):
    inbox = Inbox()
    async with inbox.receiver:
        server = await serve(empty_database_url, tmp_path)
        try:
            async with httpx.AsyncClient(base_url=server.base_url, headers=ADMIN) as client:
                response = await client.post("/v1/hooks", json={
                    "name": "inbox", "phase": "event", "url": inbox.receiver.url("/events"),
                    "events": EVENTS})
                assert response.status_code == 201, response.text
                inbox.secret = response.json()["secret"]
                response = await client.post("/v1/agents", json=agent_body(
                    "calc", [calls(("calculator", {"expression": "1+1"})), step("2")],
                    [CALCULATOR]))
                assert response.status_code == 201, response.text
                runs = []
                for text in ("one", "two"):
                    response = await client.post("/v1/runs", json={"agent": "calc",
                                                                   "input": text})
                    run_id = response.json()["id"]
                    response = await client.get(f"/v1/runs/{run_id}/wait",
                                                params={"timeout_s": 10})
                    assert response.json()["status"] == "completed", response.text
                    runs.append(run_id)
            deadline = time.monotonic() + 10
            while not inbox.attempted:  # the first attempt failed
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        finally:
            assert await asyncio.to_thread(server.stop), server.log()
        failed_ids = set(inbox.attempted)

        server = await serve(empty_database_url, tmp_path)
        try:
            inbox.failing = False
            deadline = time.monotonic() + 30
            while len(inbox.delivered) < 2 * len(EVENTS):
                assert time.monotonic() < deadline, inbox.delivered
                await asyncio.sleep(0.05)
        finally:
            assert await asyncio.to_thread(server.stop), server.log()

    events = [event for _, event in inbox.delivered]
    assert [(e["run_id"], e["type"]) for e in events] == [
        (run_id, type_) for run_id in runs for type_ in EVENTS]
    delivered_ids = [message_id for message_id, _ in inbox.delivered]
    assert len(set(delivered_ids)) == len(delivered_ids)
    assert failed_ids <= set(delivered_ids)  # a retried delivery kept its webhook-id
