"""Concurrent interrupts of one busy session (§4.1 `if_busy: "interrupt"`)."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime

from tests.runs.helpers import SLEEP, Api, assert_gapless, calls, of_type

NAP = calls(("sleep", {"seconds": 30}))
REQUESTS = 20


def _ts(event: dict) -> datetime:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))


class TestConcurrentInterrupts:
    async def test_exactly_one_run_survives_and_one_runs_at_a_time(self, alice: Api):
        await alice.agent("napper", [NAP], [SLEEP])
        session_id = await alice.session("napper")
        first = await alice.start(session_id, "nap")
        await alice.until(first["id"], "tool.started")

        responses = await asyncio.gather(*(
            alice.post_run(session_id, f"question {i}", if_busy="interrupt")
            for i in range(REQUESTS)))
        assert [r.status_code for r in responses] == [202] * REQUESTS, [
            r.text for r in responses if r.status_code != 202]
        runs = [first, *(r.json() for r in responses)]
        ended = [await alice.wait(run["id"]) for run in runs]

        statuses = [run["status"] for run in ended]
        assert statuses.count("completed") == 1, statuses
        assert set(statuses) == {"completed", "cancelled"}, statuses
        survivor = next(run for run in ended if run["status"] == "completed")
        assert survivor["output"] == f"echo: {survivor_input(runs, survivor['id'])}"

        spans = []
        for run in ended:
            events = await alice.events(run["id"])
            assert_gapless(events)
            started = of_type(events, "run.started")
            if started:
                spans.append((_ts(started[0]), _ts(events[-1]), run["id"]))
        spans.sort()
        for (_, end, before), (start, _, after) in itertools.pairwise(spans):
            assert end <= start, f"{before} still ran when {after} started"
        # The interrupted run and the survivor; on a busy machine a run created early may
        # also be claimed (storing its input) before a later one interrupts it.
        assert len(spans) >= 2, spans

        messages = await alice.messages(session_id)
        roles = [m["role"] for m in messages]
        claimed_between = len(roles) - 5
        assert roles == ["user", "assistant", "tool", *["user"] * claimed_between,
                         "user", "assistant"], roles
        call_id = messages[1]["tool_calls"][0]["id"]
        assert messages[2]["tool_call_id"] == call_id
        assert messages[2]["content"].startswith("<cancelled: interrupted by run_")
        session = await alice.get_session(session_id)
        assert (session["status"], session["active_run_id"]) == ("idle", None)


def survivor_input(runs: list[dict], run_id: str) -> str:
    index = [run["id"] for run in runs].index(run_id)
    return f"question {index - 1}"
