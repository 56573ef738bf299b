"""What an imported item must be beyond its columns: something the service can serve and run.

The item models check the values a table takes. These checks put each item through what
reads it after a restore: the views and response models of the API, the agent
configuration that runs are built from, and the session's open tool calls. An envelope
whose hash matches but whose items were edited by hand is refused here, at import, rather
than restored into an instance that then fails on every read of them.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from app.loop.config import RunConfig
from app.schemas.agents import Agent, AgentSpec
from app.schemas.events import Event
from app.schemas.hooks import Hook, HookCreate
from app.schemas.messages import Message
from app.schemas.runs import InputMessage, Run
from app.schemas.sessions import Session
from app.services.agents import agent_view, version_view
from app.services.runs import run_view
from app.services.sessions import session_view

RUN_ONLY_CONFIG = ("only_tools", "allowed_hosts")
"""What a run's configuration holds beyond its agent's: the run's overrides."""


class Unservable(ValueError):
    """An item the service could store but not serve; `where` is the path to the value."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where


class OpenCall(BaseModel):
    """A tool call of a session that still waits for its result."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: Annotated[str, Field(min_length=1)]
    name: str
    arguments: str


class ClientOutput(BaseModel):
    output: str
    is_error: bool = False


class Decision(BaseModel):
    approve: bool
    reason: str | None = None
    arguments: Any = None


class Parked(BaseModel):
    kind: Literal["parked"]
    turn: int


class AwaitingInput(BaseModel):
    kind: Literal["input"]


class AwaitingOutputs(BaseModel):
    kind: Literal["submit_tool_outputs"]
    turn: int
    tool_calls: list[OpenCall]
    deferred: list[OpenCall]
    answers: dict[str, ClientOutput]


class AwaitingDecisions(BaseModel):
    kind: Literal["approve_tool_calls"]
    turn: int
    tool_calls: list[OpenCall]
    deferred: list[OpenCall]
    answers: dict[str, Decision]


WAITS: dict[str, type[BaseModel]] = {
    "parked": Parked, "input": AwaitingInput, "submit_tool_outputs": AwaitingOutputs,
    "approve_tool_calls": AwaitingDecisions,
}
"""A run's `waiting` column by its `kind`, as the run core reads it when the run goes on."""


class RunRequest(BaseModel):
    """What a run was asked, as the run core reads it when the run starts."""

    input: list[InputMessage] = Field(default_factory=list)
    on_pending: Literal["reject", "resume", "abort"] = "reject"


class PendingInput(RootModel[list[InputMessage]]):
    """Input a run took while it waited, for its next turn."""


def _row(item: dict[str, Any]) -> SimpleNamespace:
    """The item as the views read a row: by attribute, `metadata` as `meta`."""
    return SimpleNamespace(**item, meta=item.get("metadata"))


UNION_MEMBERS = frozenset({"str", "int", "float", "bool", "none", "list", "dict"})


def _path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a path into the item, without the names pydantic gives
    union members (`str`, `list[…]`, `tagged-union[…]` and its tag)."""
    parts, after_tag = [], False
    for part in loc:
        if after_tag:
            after_tag = False
        elif isinstance(part, int):
            parts.append(f"[{part}]")
        elif part.startswith("tagged-union["):
            after_tag = True
        elif "[" not in part and part not in UNION_MEMBERS:
            parts.append(f".{part}")
    return "".join(parts)


def describe(exc: ValidationError) -> tuple[str, str]:
    """Where the first error is, and what is wrong there (every union member's reason)."""
    errors = exc.errors()
    where = _path(errors[0]["loc"])
    reasons = dict.fromkeys(e["msg"] for e in errors if _path(e["loc"]) == where)
    return where, " or ".join(reasons)


def _valid(model: type[BaseModel], value: Any, where: str) -> None:
    try:
        model.model_validate(value)
    except ValidationError as exc:
        path, reason = describe(exc)
        raise Unservable(f"{where}{path}", reason) from None


def _agent(item: dict[str, Any]) -> None:
    agent = _row(item)
    _valid(AgentSpec, item["config"], ".config")
    _valid(Agent, agent_view(agent), "")  # type: ignore[arg-type]
    versions = [version["version"] for version in item["versions"]]
    if item["version"] not in versions:
        raise Unservable(".versions", f"the current version {item['version']} is missing")
    if len(set(versions)) != len(versions):
        raise Unservable(".versions", "a version appears twice")
    for index, version in enumerate(item["versions"]):
        _valid(AgentSpec, version["config"], f".versions[{index}].config")
        _valid(Agent, version_view(agent, _row(version)),  # type: ignore[arg-type]
               f".versions[{index}]")


def _session(item: dict[str, Any]) -> None:
    _valid(Session, session_view(_row(item)), "")  # type: ignore[arg-type]
    for index, call in enumerate(item["open_tool_calls"]):
        _valid(OpenCall, call, f".open_tool_calls[{index}]")
    seqs: set[int] = set()
    for index, message in enumerate(item["messages"]):
        _valid(Message, message, f".messages[{index}]")
        if message["seq"] in seqs:
            raise Unservable(f".messages[{index}].seq", f"seq {message['seq']} appears twice")
        if message["seq"] > item["last_seq"]:
            raise Unservable(f".messages[{index}].seq",
                             f"seq {message['seq']} is after the session's last_seq")
        seqs.add(message["seq"])


def _run(item: dict[str, Any]) -> None:
    _valid(Run, run_view(_row(item)), "")  # type: ignore[arg-type]
    config = item["config"]
    _valid(RunConfig, config, ".config")
    _valid(AgentSpec, {k: v for k, v in config.items() if k not in RUN_ONLY_CONFIG},
           ".config")
    waiting = item["waiting"]
    if waiting is not None:
        model = WAITS.get(waiting.get("kind"))
        if model is None:
            raise Unservable(".waiting.kind", f"must be one of {', '.join(WAITS)}")
        _valid(model, waiting, ".waiting")
    _valid(PendingInput, item["pending_input"], ".pending_input")
    _valid(RunRequest, item["request"], ".request")


def _event(item: dict[str, Any]) -> None:
    _valid(Event, {**item, "session_id": ""}, "")


def _hook(item: dict[str, Any]) -> None:
    _valid(Hook, _row({**item, "circuit": "closed", "circuit_until": None}), "")
    _valid(HookCreate, {name: item[name] for name in HookCreate.model_fields if name in item}, "")


CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "agents": _agent, "events": _event, "hooks": _hook, "runs": _run, "sessions": _session,
}


def check_servable(section: str, item: dict[str, Any]) -> None:
    """Raise `Unservable` if the service could not serve or run `item` once restored (an
    item already valid for its section's model)."""
    CHECKS[section](item)
