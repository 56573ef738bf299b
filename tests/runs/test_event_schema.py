"""Every event a run emits is an instance of the OpenAPI document's `Event` union."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.runs.helpers import CALCULATOR, SLEEP, Api, calls, error, step, types


@pytest.fixture
async def event_schema(alice: Api) -> Draft202012Validator:
    """A validator of `#/components/schemas/Event`, from the served document."""
    document = (await alice.client.get("/openapi.json")).json()
    registry: Registry[Any] = Registry().with_resource(
        "urn:loomd", Resource.from_contents(document, default_specification=DRAFT202012))
    return Draft202012Validator({"$ref": "urn:loomd#/components/schemas/Event"},
                                registry=registry)


def assert_valid(schema: Draft202012Validator, events: list[dict[str, Any]]) -> None:
    for event in events:
        problems = [e.message for e in schema.iter_errors(event)]
        assert not problems, (event, problems)


async def test_the_events_of_a_full_run_match_the_union(
    alice: Api, event_schema: Draft202012Validator,
) -> None:
    await alice.agent("thinker", [
        error(500, "flaky"),
        step("Let me add.", reasoning="two plus three",
             tool_calls=[{"name": "calculator", "arguments": {"expression": "2+3"}}]),
        step("Five", finish_reason="length"),
        step("."),
    ], [CALCULATOR])
    session_id = await alice.session("thinker")
    run = await alice.wait((await alice.start(session_id, "2+3?"))["id"])
    assert run["status"] == "completed"
    events = await alice.events(run["id"])
    assert {"run.created", "run.started", "turn.started", "llm.retry", "reasoning.delta",
            "message.delta", "message.completed", "usage", "tool.started", "tool.completed",
            "turn.completed", "run.completed"} <= set(types(events))
    assert_valid(event_schema, events)


async def test_failed_and_cancelled_runs_match_the_union(
    alice: Api, event_schema: Draft202012Validator,
) -> None:
    await alice.agent("refused", [error(400, "bad request")])
    failed = await alice.wait((await alice.start(await alice.session("refused")))["id"])
    assert failed["status"] == "failed"

    await alice.agent("napper", [calls(("sleep", {"seconds": 30})), step("never")], [SLEEP])
    napping = await alice.start(await alice.session("napper"))
    await alice.until(napping["id"], "tool.started")
    cancelled = (await alice.cancel(napping["id"], wait=True))["run"]
    assert cancelled["status"] == "cancelled"

    for run in (failed, cancelled):
        events = await alice.events(run["id"])
        assert events[-1]["type"] == f"run.{run['status']}"
        assert_valid(event_schema, events)


async def test_an_event_off_the_union_is_rejected(event_schema: Draft202012Validator) -> None:
    envelope = {"seq": 3, "run_id": "run_x", "session_id": "ses_x",
                "ts": "2026-01-02T03:04:05.678Z"}
    assert event_schema.is_valid({**envelope, "type": "message.delta",
                                  "data": {"turn": 1, "text": "Hi"}})
    assert not event_schema.is_valid({**envelope, "type": "message.delta",
                                      "data": {"turn": 1}})
    assert not event_schema.is_valid({**envelope, "type": "tool.completed",
                                      "data": {"turn": 1, "text": "Hi"}})
