"""Event hooks (§6): every listed event reaches the receiver, in order, at least once, signed
per Standard Webhooks, through the public API against receivers on loopback."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.config import Settings
from tests.conftest import make_settings
from tests.runs.helpers import CALCULATOR, Api, calls, step
from tests.tools.receivers import Received, Receiver, Reply

EVENTS = ["run.created", "run.started", "tool.completed", "run.completed"]


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, llm_retry_base_s=0.01, allow_private_urls="127.0.0.1",
                         hook_max_attempts=3)


class Inbox:
    """A receiver that verifies each delivery, and can be told to fail for a while."""

    def __init__(self) -> None:
        self.secret = ""
        self.failing = False
        self.received: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.attempts = 0
        self.receiver = Receiver(self.handle)

    async def handle(self, request: Received) -> Reply:
        self.attempts += 1
        try:
            payload = Webhook(self.secret).verify(request.body, request.headers)
        except WebhookVerificationError as exc:
            return Reply.text(f"bad signature: {exc}", status=401)
        if self.failing:
            return Reply.text("down", status=503)
        self.received.append(payload)
        self.ids.append(request.headers["webhook-id"])
        return Reply(204)

    async def register(self, api: Api, events: list[str] | None = None) -> str:
        response = await api.client.post("/v1/hooks", json={
            "name": "inbox", "phase": "event", "url": self.receiver.url("/events"),
            "events": events or EVENTS})
        assert response.status_code == 201, response.text
        self.secret = response.json()["secret"]
        return str(response.json()["id"])

    async def until(self, count: int, timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} of {count} delivered"
            await asyncio.sleep(0.05)


async def one_run(api: Api) -> dict[str, Any]:
    await api.agent("calc", [calls(("calculator", {"expression": "1+1"})), step("2")],
                    tools=[CALCULATOR])
    return await api.wait((await api.start(await api.session("calc")))["id"])


def types_of(received: list[dict[str, Any]]) -> list[str]:
    return [payload["event"]["type"] for payload in received]


class TestEventHooks:
    async def test_the_listed_events_arrive_in_order(self, alice: Api):
        inbox = Inbox()
        async with inbox.receiver:
            hook_id = await inbox.register(alice)
            run = await one_run(alice)
            await inbox.until(4)
        assert types_of(inbox.received) == EVENTS
        first = inbox.received[0]
        assert first["type"] == "event" and first["hook_id"] == hook_id
        assert first["event"]["run_id"] == run["id"] and first["event"]["seq"] == 1
        events = {e["seq"]: e for e in await alice.events(run["id"])}
        for payload in inbox.received:
            event = payload["event"]
            assert event == events[event["seq"]]
        assert len(set(inbox.ids)) == 4

    async def test_a_receiver_down_for_a_while_gets_every_event_in_order(self, alice: Api):
        inbox = Inbox()
        inbox.failing = True
        async with inbox.receiver:
            hook_id = await inbox.register(alice, ["run.created", "run.completed"])
            await one_run(alice)
            await one_run_again(alice)
            deadline = time.monotonic() + 10
            while inbox.attempts < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            inbox.failing = False
            await inbox.until(4, timeout_s=20)
        assert types_of(inbox.received) == ["run.created", "run.completed"] * 2
        deliveries = (await alice.client.get(f"/v1/hooks/{hook_id}/deliveries")).json()
        retried = [d for d in deliveries["items"] if d["attempt"] > 1]
        assert retried and all(d["status"] == "delivered" for d in deliveries["items"])

    async def test_a_dead_delivery_is_retried_by_hand(self, alice: Api):
        inbox = Inbox()
        inbox.failing = True
        async with inbox.receiver:
            hook_id = await inbox.register(alice, ["run.created"])
            await one_run(alice)
            url = f"/v1/hooks/{hook_id}/deliveries"
            deadline = time.monotonic() + 20
            while True:  # three attempts: 0 s, ~1 s, ~2 s later
                items = (await alice.client.get(url)).json()["items"]
                if items and items[0]["status"] == "dead":
                    break
                assert time.monotonic() < deadline, items
                await asyncio.sleep(0.1)
            (dead,) = items
            assert dead["attempt"] == 3
            inbox.failing = False
            response = await alice.client.post(f"{url}/{dead['id']}/retry")
            assert response.status_code == 202, response.text
            await inbox.until(1)
        assert types_of(inbox.received) == ["run.created"]
        assert (await alice.client.get(url)).json()["items"][0]["status"] == "delivered"


async def one_run_again(api: Api) -> dict[str, Any]:
    return await api.wait((await api.start(await api.session("calc")))["id"])


class TestRunState:
    async def test_run_state_follows_every_status_change(self, alice: Api):
        inbox = Inbox()
        async with inbox.receiver:
            await inbox.register(alice, ["run.state"])
            run = await one_run(alice)
            await inbox.until(3)
        states = [payload["event"] for payload in inbox.received]
        assert [s["status"] for s in states] == ["queued", "running", "completed"]
        assert all(s["type"] == "run.state" and s["run_id"] == run["id"] for s in states)
        assert states[-1]["stop_reason"] == "end_turn" and states[-1]["agent"] == "calc"


class TestCircuit:
    async def test_repeated_failures_open_the_hooks_circuit(self, alice: Api):
        inbox = Inbox()
        inbox.failing = True
        async with inbox.receiver:
            hook_id = await inbox.register(alice, ["run.created", "run.started",
                                                   "tool.completed", "run.completed"])
            await one_run(alice)
            await one_run_again(alice)
            deadline = time.monotonic() + 20
            while True:
                hook = (await alice.client.get(f"/v1/hooks/{hook_id}")).json()
                if hook["circuit"] == "open":
                    break
                assert time.monotonic() < deadline, hook
                await asyncio.sleep(0.1)


class TestOrder:
    async def test_each_runs_events_arrive_in_seq_order_under_load(self, alice: Api):
        every = ["run.created", "run.started", "turn.started", "message.completed", "usage",
                 "tool.started", "tool.completed", "turn.completed", "run.completed"]
        inbox = Inbox()
        async with inbox.receiver:
            await inbox.register(alice, every)
            await alice.agent("calc", [calls(("calculator", {"expression": "1+1"})),
                                       step("2")], tools=[CALCULATOR])
            # Runs at once, so the writer commits their events in shared transactions.
            sessions = [await alice.session("calc") for _ in range(16)]
            runs = await asyncio.gather(*(alice.start(session) for session in sessions))
            ended = [await alice.wait(run["id"]) for run in runs]
            count = 0
            for run in ended:
                count += len([e for e in await alice.events(run["id"]) if e["type"] in every])
            await inbox.until(count, timeout_s=30)
        by_run: dict[str, list[dict[str, Any]]] = {}
        for payload in inbox.received:
            by_run.setdefault(payload["event"]["run_id"], []).append(payload["event"])
        for events in by_run.values():
            seqs = [event["seq"] for event in events]
            assert seqs == sorted(seqs), [(e["seq"], e["type"]) for e in events]
            assert events[-1]["type"] == "run.completed"
