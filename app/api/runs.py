"""`/v1/runs` and `POST /v1/sessions/{session_id}/runs`: start, read, follow, wait, cancel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api.deps import (
    OWNER_FORBIDDEN,
    CurrentPrincipal,
    Cursor,
    DbSession,
    Limit,
    ManagerDep,
    Owner,
    RunById,
    RunId,
    StreamPrincipal,
    get_database,
    namespace,
)
from app.api.responses import AUTH, READ, WRITE, errors
from app.auth import Principal
from app.errors import BadRequest
from app.events.sse import RETRY_MS, follow_run, sse_frames
from app.events.types import TERMINAL_EVENTS, is_terminal
from app.runs import batch
from app.runs import service as run_service
from app.runs.manager import RunManager
from app.schemas.common import RunConflictProblem, RunStateProblem, ToolCallMismatchProblem
from app.schemas.events import Event, EventPage
from app.schemas.runs import (
    Approvals,
    BatchCreate,
    BatchDetached,
    BatchJoined,
    BatchResult,
    CancelResult,
    OneShotRunCreate,
    Run,
    RunCancel,
    RunCreate,
    RunInputCreate,
    RunPage,
    ToolOutputs,
)
from app.schemas.sessions import SessionCreate
from app.services import runs as service
from app.status import TERMINAL_STATUSES, RunStatus
from app.store.tables import Run as RunRow

router = APIRouter(tags=["runs"])

WAIT_ENDS = (*TERMINAL_STATUSES, "requires_action")
WAIT_EVENTS = TERMINAL_EVENTS | {"run.requires_action"}

SessionId = Annotated[str, Path(description="the session's id (`ses_…`)", max_length=64)]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description="repeat-safe creation (1..255 characters)"),
]
SERVER_SENT_EVENT: dict[str, Any] = {
    "type": "object", "required": ["data"], "title": "ServerSentEvent",
    "description": "One Server-Sent Event: `id` is the seq, `event` the type, `data` the Event "
                   "as JSON. The stream opens with `retry: 2000` and ends after the terminal "
                   "event; `: ping` comments keep it alive.",
    "properties": {
        "id": {"type": "string"}, "event": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": {"$ref": "#/components/schemas/Event"}},
        "retry": {"type": "integer", "minimum": 0},
    },
}
"""The per-event schema of `text/event-stream` responses (OpenAPI 3.1 style), a component
(`app.openapi` adds it); `docs/clients.md` shows how to follow a stream."""
SSE_STREAM = {"$ref": "#/components/schemas/ServerSentEvent"}
RUN_JSON = {"schema": {"$ref": "#/components/schemas/Run"}}
# JSON first: SDK generators type a response by its first content type.
CREATED: dict[int | str, dict[str, Any]] = {
    200: {"description": "A replay of an earlier request with the same Idempotency-Key, or, "
          "with `if_busy: \"steer\"` on a busy session, the session's active run, which got "
          "the input (the Run, JSON); with `stream: true`, the run's events "
          "(`text/event-stream`) instead",
          "content": {"application/json": RUN_JSON, "text/event-stream": {"schema": SSE_STREAM}},
          "model": Run},
    202: {"description": "`stream: false`: the run, queued", "model": Run},
}

CREATE_ERRORS = errors(
    *WRITE, 409, 429, 503, problems={409: RunConflictProblem},
    s409="`session_busy` (with `active_run_id`), `session_pending` (with "
         "`pending_tool_calls`), `conflict` (agent deleted), `idempotency_conflict`",
)


def _view(run: RunRow) -> Run:
    return Run.model_validate(service.run_view(run))


async def _start(
    request: Request, manager: RunManager, principal: Principal, session_id: str | None,
    body: RunCreate, idempotency_key: str | None, sent: RunCreate,
    new_session: SessionCreate | None = None, owner: str | None = None,
) -> Response:
    """Create (or replay) the run; `sent` is the body as posted, which the key is bound to."""
    started = await run_service.start_run(
        manager, principal, body, path=request.url.path, session_id=session_id,
        new_session=new_session, owner=owner, idempotency_key=idempotency_key,
        sent=sent.model_dump(mode="json", exclude_unset=True), follow=body.stream)
    run, replayed = started.run, started.replayed
    headers = {"Location": f"/v1/runs/{run.id}", "Content-Location": f"/v1/runs/{run.id}"}
    if replayed:
        headers["Idempotency-Replayed"] = "true"
    if started.steered:
        if body.stream:  # the active run's events, from its first one
            events = follow_run(manager.database, manager.bus, run.id, run.session_id, 0)
            return EventSourceResponse(sse_frames(events), ping=15, headers=headers)
        return Response(_view(run).model_dump_json(), status_code=status.HTTP_200_OK,
                        headers=headers, media_type="application/json")
    if body.stream:
        events = follow_run(manager.database, manager.bus, run.id, run.session_id, 0,
                            fresh=started.fresh)
        if body.on_disconnect == "cancel" and not replayed:
            events = _cancel_on_disconnect(events, manager, run.id)
        return EventSourceResponse(sse_frames(events), ping=15, headers=headers)
    code = status.HTTP_200_OK if replayed else status.HTTP_202_ACCEPTED
    return Response(_view(run).model_dump_json(), status_code=code, headers=headers,
                    media_type="application/json")


async def _cancel_on_disconnect(
    batches: AsyncIterator[list[dict[str, Any]]], manager: RunManager, run_id: str
) -> AsyncIterator[list[dict[str, Any]]]:
    finished = False
    try:
        async for batch in batches:
            yield batch
            finished = is_terminal(batch[-1])
    finally:
        if not finished:
            asyncio.get_running_loop().create_task(
                manager.cancel(run_id, "the client disconnected", wait=False))


@router.post(
    "/v1/sessions/{session_id}/runs", name="create", status_code=202,
    summary="Start a run on a session", responses={**CREATED, **CREATE_ERRORS},
    response_model=Run,
)
async def create_run(
    session_id: SessionId, body: RunCreate, request: Request, principal: CurrentPrincipal,
    manager: ManagerDep, idempotency_key: IdempotencyKey = None,
) -> Response:
    """Queue a run of the session's agent; with `stream: true`, follow it as SSE."""
    return await _start(request, manager, principal, session_id, body, idempotency_key, body)


@router.post(
    "/v1/runs", name="create_oneshot", status_code=202,
    summary="Start a run in a new session",
    responses={**CREATED, **CREATE_ERRORS, **errors(403, s403=OWNER_FORBIDDEN)},
    response_model=Run,
)
async def create_oneshot_run(
    body: OneShotRunCreate, request: Request, principal: CurrentPrincipal,
    manager: ManagerDep, idempotency_key: IdempotencyKey = None, owner: Owner = None,
) -> Response:
    """Create a session of `agent` and its first run in one call (an admin: with `?owner=`,
    of another subject's agent; the session and run are that subject's)."""
    owner_namespace = namespace(principal, owner)
    new_session = SessionCreate(agent=body.agent, title=body.session.title,
                                metadata=body.session.metadata)
    run_body = RunCreate.model_validate(body.model_dump(exclude={"agent", "session"},
                                                        exclude_unset=True))
    return await _start(request, manager, principal, None, run_body, idempotency_key, body,
                        new_session, owner_namespace)


@router.get("/v1/runs", name="list", summary="List runs", responses=errors(*READ))
async def list_runs(
    db: DbSession, principal: CurrentPrincipal,
    status_: Annotated[RunStatus | None, Query(alias="status")] = None,
    agent: Annotated[str | None, Query(max_length=64)] = None,
    session_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Limit = 50, cursor: Cursor = None,
) -> RunPage:
    """Newest first; users see their own runs, admins everyone's."""
    rows, next_cursor = await service.list_runs(db, principal, status_, agent, session_id,
                                                limit, cursor)
    return RunPage(items=[_view(r) for r in rows], next_cursor=next_cursor)


@router.get(
    "/v1/runs/stream", name="stream_states", summary="Follow status changes of runs",
    response_class=EventSourceResponse,
    responses={200: {"description": "`run.state` events (`text/event-stream`): "
                     "`{type, run_id, session_id, agent, status, stop_reason, ts}`",
                     "content": {"text/event-stream": {"schema": {"type": "string"}}}},
               **errors(*AUTH, 422)},
)
async def stream_run_states(
    manager: ManagerDep, principal: StreamPrincipal,
    status_: Annotated[RunStatus | None, Query(alias="status")] = None,
    agent: Annotated[str | None, Query(max_length=64)] = None,
) -> EventSourceResponse:
    """Live `run.state` events of the caller's runs (every run, for admins), for dashboards."""
    bus = manager.bus
    subscription = bus.subscribe(bus.ALL)

    async def states() -> AsyncIterator[ServerSentEvent]:
        try:
            yield ServerSentEvent(retry=RETRY_MS, comment="loomd")
            while (state := await subscription.get()) is not None:
                if not principal.can_see(state["owner"]):
                    continue
                if (status_ and state["status"] != status_) or (agent and state["agent"] != agent):
                    continue
                public = {k: v for k, v in state.items() if k != "owner"}
                yield ServerSentEvent(data=json.dumps(public, separators=(",", ":")),
                                      event="run.state")
        finally:
            bus.unsubscribe(subscription)

    return EventSourceResponse(states(), ping=15)


@router.get("/v1/runs/{run_id}", name="get", summary="Get a run", responses=errors(*READ))
async def get_run(run: RunById) -> Run:
    """One run with its status, output and usage."""
    return _view(run)


def _prefers_json(accept: str | None) -> bool:
    """Whether `Accept` ranks `application/json` above `text/event-stream`."""
    quality: dict[str, float] = {}
    for part in (accept or "").split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        quality[media.lower()] = q
    json_q = quality.get("application/json", -1.0)
    sse_q = quality.get("text/event-stream", quality.get("*/*", -1.0))
    return json_q > sse_q


MAX_SEQ = 2**31 - 1


def _seq(value: str, what: str) -> int:
    value = value.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 10 or int(value) > MAX_SEQ:
        raise BadRequest(f"{what} must be a non-negative integer (a `seq`)")
    return int(value)


def _position(last_event_id: str | None, cursor: str | None, after: int | None) -> int:
    """The seq to read after: `Last-Event-ID`, else `cursor`, else `after`, else 0."""
    if last_event_id is not None:
        return _seq(last_event_id, "Last-Event-ID")
    if cursor is not None:
        return _seq(cursor, "the cursor")
    return after or 0


EventCursor = Annotated[str | None, Query(
    max_length=512, description="`next_cursor` of the previous page (wins over `after`)")]
After = Annotated[int | None, Query(ge=0, le=MAX_SEQ, description="only events with a greater "
                                    "seq (the same as `cursor`, as an integer)")]


async def _event_page(db: DbSession, run: RunRow, position: int, limit: int) -> Response:
    rows = await service.list_events(db, run.id, position, limit + 1)
    items = [Event.model_validate({
        "type": r.type, "seq": r.seq, "run_id": run.id, "session_id": run.session_id,
        "ts": r.ts, "data": r.data}) for r in rows[:limit]]
    page = EventPage(items=items, next_cursor=str(rows[limit - 1].seq)
                     if len(rows) > limit else None)
    return Response(page.model_dump_json(), media_type="application/json")


@router.get(
    "/v1/runs/{run_id}/events", name="events", summary="Follow a run's events (SSE)",
    response_class=EventSourceResponse, response_model=None,
    responses={
        200: {"description": "Server-Sent Events (`text/event-stream`), or a JSON page when "
              "`Accept` prefers `application/json` (generated clients: use `runs-list_events`)",
              "content": {"text/event-stream": {"schema": SSE_STREAM},
                          "application/json": {"schema": {
                              "$ref": "#/components/schemas/EventPage"}}}},
        204: {"description": "The cursor is at or past the run's terminal event"},
        **errors(*READ),
    },
)
async def run_events(
    run_id: RunId, request: Request, principal: StreamPrincipal, manager: ManagerDep,
    cursor: EventCursor = None, after: After = None, limit: Limit = 200,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    """Replay events after the cursor (`Last-Event-ID` wins over `cursor` and `after`), then
    follow live; for `EventSource` and `curl -N`."""
    database = get_database(request)
    position = _position(last_event_id, cursor, after)
    async with database.read() as db:
        run = await service.get_run(db, principal, run_id)
        if _prefers_json(request.headers.get("accept")):
            return await _event_page(db, run, position, limit)
    if run.status in TERMINAL_STATUSES and position >= run.last_seq:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    events = follow_run(database, manager.bus, run_id, run.session_id, position)
    return EventSourceResponse(sse_frames(events), ping=15)


@router.get(
    "/v1/runs/{run_id}/events/page", name="list_events", summary="List a run's events (JSON)",
    responses=errors(*READ), response_model=EventPage,
)
async def list_run_events(
    run: RunById, db: DbSession, cursor: EventCursor = None, after: After = None,
    limit: Limit = 200,
) -> Response:
    """A page of the run's events so far, ascending by `seq`, as JSON whatever `Accept` says;
    pass `next_cursor` as `?cursor=` for the next page (null: none yet)."""
    return await _event_page(db, run, _position(None, cursor, after), limit)


@router.get(
    "/v1/runs/{run_id}/wait", name="wait", summary="Wait for a run to finish",
    responses=errors(*READ),
)
async def wait_for_run(
    run_id: RunId, request: Request, principal: CurrentPrincipal, manager: ManagerDep,
    timeout_s: Annotated[float, Query(ge=0, le=300)] = 30,
) -> Run:
    """The run once it is terminal or `requires_action`, or as it is when the time is up."""
    database = get_database(request)
    bus = manager.bus
    subscription = bus.subscribe(run_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        while True:
            async with database.read() as db:
                run = await service.get_run(db, principal, run_id)
            if run.status in WAIT_ENDS:
                return _view(run)
            # Re-read when the run may have reached a state `wait` returns; at least every
            # second all the same, for a run that another process executes.
            settled_at = min(deadline, loop.time() + 1.0)
            while (remaining := settled_at - loop.time()) > 0:
                try:
                    event = await asyncio.wait_for(subscription.get(), remaining)
                except TimeoutError:
                    break
                if event is None or event["type"] in WAIT_EVENTS:
                    break
            if loop.time() >= deadline:
                async with database.read() as db:
                    return _view(await service.get_run(db, principal, run_id))
    finally:
        bus.unsubscribe(subscription)


@router.post(
    "/v1/runs/{run_id}/cancel", name="cancel", summary="Cancel a run",
    responses=errors(*WRITE),
)
async def cancel_run(
    run: RunById, manager: ManagerDep, body: RunCancel | None = None,
) -> CancelResult:
    """Cancel the run (idempotent: a finished run gives `cancelled: 0`); the body is
    optional."""
    body = body or RunCancel()
    cancelled, current = await run_service.cancel_run(
        manager, run, body.reason or "cancelled by the client", body.wait)
    return CancelResult(cancelled=cancelled, run=_view(current))


@router.post(
    "/v1/runs/{run_id}/tool-outputs", name="submit_tool_outputs",
    summary="Submit the outputs of client tools",
    responses=errors(*WRITE, 409, 503,
                     problems={409: RunStateProblem, 422: ToolCallMismatchProblem},
                     s409="`run_finished` (the run has ended), `run_not_waiting` (it does not "
                          "wait for tool outputs)",
                     s422="`tool_call_mismatch` (an id the run does not wait for, one given "
                          "twice, or one missing), or `validation_error`"),
)
async def submit_tool_outputs(
    run_id: RunId, body: ToolOutputs, principal: CurrentPrincipal, manager: ManagerDep,
) -> Run:
    """Answer a run in `requires_action` (`submit_tool_outputs`); it goes on at once."""
    return _view(await run_service.submit_tool_outputs(manager, principal, run_id, body))


@router.post(
    "/v1/runs/{run_id}/approvals", name="decide_approvals",
    summary="Approve or deny tool calls",
    responses=errors(*WRITE, 409, 503,
                     problems={409: RunStateProblem, 422: ToolCallMismatchProblem},
                     s409="`run_finished` (the run has ended), `run_not_waiting` (it does not "
                          "wait for approvals)",
                     s422="`tool_call_mismatch` (an id the run does not wait for, one given "
                          "twice, or one decided already), or `validation_error` (replaced "
                          "`arguments` that do not fit the tool)"),
)
async def decide_approvals(
    run_id: RunId, body: Approvals, principal: CurrentPrincipal, manager: ManagerDep,
) -> Run:
    """Decide on calls of a run in `requires_action` (`approve_tool_calls`); the run goes on
    once every call is decided. Each decision is recorded with who decided it, and when."""
    return _view(await run_service.decide_approvals(manager, principal, run_id, body))


@router.post(
    "/v1/runs/batch", name="create_batch", summary="Start several runs at once",
    status_code=200,
    responses={200: {"description": "`join`: a row per run, index-aligned with the request",
                     "model": BatchJoined},
               202: {"description": "`detach`: the runs, started", "model": BatchDetached},
               **errors(*WRITE, 403, 404, 429, 503, s403=OWNER_FORBIDDEN,
                        s404="an agent of the batch does not exist")},
    response_model=BatchJoined,
)
async def create_batch(
    body: BatchCreate, principal: CurrentPrincipal, manager: ManagerDep, owner: Owner = None,
) -> Response:
    """Start 1..32 runs, each in a new session; `join` waits for them (up to `timeout_ms`)
    and reports each run's outcome in its own row, `detach` answers at once. An admin may
    start them on another subject's agents with `?owner=`: the runs are that subject's."""
    rows, joined = await batch.start_batch(manager, principal, body, namespace(principal, owner))
    if not joined:
        detached = BatchDetached(runs=[_view(row) for row in rows])
        return Response(detached.model_dump_json(), status_code=202,
                        media_type="application/json")
    results = []
    for index, row in enumerate(rows):
        view = _view(row)
        results.append(BatchResult(
            index=index, run_id=view.id, session_id=view.session_id, status=view.status,
            stop_reason=view.stop_reason, output=view.output, usage=view.usage,
            error=view.error))
    return Response(BatchJoined(results=results).model_dump_json(),
                    media_type="application/json")


@router.post(
    "/v1/runs/{run_id}/input", name="steer", summary="Send input to a running run",
    status_code=202, response_model=Run,
    responses=errors(*WRITE, 409, 503, problems={409: RunStateProblem},
                     s409="`run_finished` (the run has ended), `input_backlog` (too much "
                          "input waits to be delivered)"),
)
async def steer_run(
    run_id: RunId, body: RunInputCreate, principal: CurrentPrincipal, manager: ManagerDep,
) -> Response:
    """Queue user input into an unfinished run: it is delivered as user messages at the
    run's next turn boundary (a `run.input` event records it). If the model has already
    given its final answer, the input starts one more turn."""
    run = await run_service.steer_run(manager, principal, run_id, body)
    return Response(_view(run).model_dump_json(), status_code=status.HTTP_202_ACCEPTED,
                    media_type="application/json")
