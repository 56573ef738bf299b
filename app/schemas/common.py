"""Shared schema pieces: strict request bases, timestamps, pages and the problem body."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError, core_schema

from app.clock import rfc3339

T = TypeVar("T")

Timestamp = Annotated[
    datetime,
    PlainSerializer(rfc3339, return_type=str, when_used="json"),
    Field(description="RFC 3339 UTC timestamp with milliseconds"),
]
Name = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$"),
    Field(description="lower-case letters, digits, `_` and `-`; 1..64 characters",
          examples=["support"]),
]
Subject = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"),
    Field(description="the principal a key acts as; 1..64 of letters, digits, `_.@-`",
          examples=["alice"]),
]
MAX_JSON_DEPTH = 32
DEPTH_RULE = (f"a request body nests objects and arrays at most {MAX_JSON_DEPTH} levels deep, "
              "the body itself being the first level")
Metadata = Annotated[
    dict[str, Any],
    Field(description=f"free-form JSON object stored with the resource (at most 64 keys; "
                      f"{DEPTH_RULE})", max_length=64),
]
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


class UnstorableValue(ValueError):
    """A value no backend can store as JSON; `path` locates it inside the validated input.

    `type` is the error type the 422 reports: `unstorable_value` or `nesting_too_deep`.
    """

    def __init__(
        self, path: tuple[str | int, ...], reason: str, type_: str = "unstorable_value"
    ) -> None:
        super().__init__(reason)
        self.path = path
        self.type = type_


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "must not contain NUL (U+0000) characters"
    # A lone UTF-16 surrogate (what slicing a JavaScript string can leave) has no UTF-8 form.
    if not text.isascii() and _LONE_SURROGATE.search(text):
        return "must not contain lone UTF-16 surrogates (U+D800..U+DFFF)"
    return None


def check_storable(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise `UnstorableValue` for anything in `value` no backend stores and reads back.

    That is NUL characters, lone surrogates (in strings and in keys), NaN, Infinity, and
    objects or arrays nested more than `max_depth` levels (`value` itself being the first).
    Postgres refuses the first three, and deeper JSON fails to serialize on its way back.
    The walk is iterative, so no input can exhaust the interpreter's recursion limit.
    """
    pending: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while pending:
        item, path = pending.pop()
        if isinstance(item, str):
            reason = _text_problem(item)
            if reason is not None:
                raise UnstorableValue(path, reason)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise UnstorableValue(path, f"must be a finite number, not {item}")
        elif isinstance(item, dict | list):
            if len(path) >= max_depth:
                raise UnstorableValue(
                    path, f"is nested too deep: {DEPTH_RULE}", "nesting_too_deep")
            if isinstance(item, list):
                pending.extend((child, (*path, index)) for index, child in enumerate(item))
                continue
            for key, child in item.items():
                if isinstance(key, str) and (reason := _text_problem(key)) is not None:
                    raise UnstorableValue(path, f"keys {reason}")
                pending.append((child, (*path, key)))


def _refuse_null(value: Any) -> Any:
    if value is None:
        raise PydanticCustomError(
            "null_not_allowed", "may not be null; omit the field instead")
    return value


class _NotNull:
    """Turns `X | None` into `X` for validation and the document, keeping `None` as default."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        schema = handler(source)
        if schema["type"] == "nullable":
            schema = schema["schema"]
        return core_schema.no_info_before_validator_function(_refuse_null, schema)


def _without_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


Omittable = Annotated[T | None, _NotNull(), Field(json_schema_extra=_without_default)]
"""A field that may be left out (then `None` in Python) but is never `null` in a request."""


class RequestModel(BaseModel):
    """Base for request bodies: unknown fields are an error, so typos surface.

    Types are strict: a JSON value of another type is an error, never converted (`"5"` is
    not an integer, `false` is not 0, `1` is not `true`; a whole number is still a number).
    Values no backend can store (see `check_storable`) are rejected up front instead of
    failing at write time or on a later read.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        check_storable(data)
        return data


class ResponseModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def documented_as(component: str) -> WithJsonSchema:
    """A JSON object documented as the named component schema, and checked only as JSON: for
    values the service stored itself, in the shape that other model defines (generated
    clients then type them with that model, not an anonymous one)."""
    return WithJsonSchema({"$ref": f"#/components/schemas/{component}"})


JsonObject = dict[str, Any]


class PendingToolCall(ResponseModel):
    """A tool call of a session that still waits for its result."""

    id: str
    name: str
    arguments: str = Field(description="the arguments as the model gave them: JSON text")


class Page(BaseModel, Generic[T]):
    """One page of a list; pass `next_cursor` as `?cursor=` for the next page."""

    items: list[T]
    next_cursor: str | None = Field(description="null on the last page")


class Problem(BaseModel):
    """An RFC 9457 problem; `code` is stable, extra members give context."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})

    type: str = Field(examples=["urn:loomd:error:not_found"])
    title: str
    status: int
    detail: str
    code: str = Field(description="stable machine-readable error code")
    request_id: str | None = None


class ValidationErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationProblem(Problem):
    """A 422 `validation_error`: `errors` names every invalid field."""

    errors: list[ValidationErrorItem] = Field(default_factory=list)


# Problems with the extra members some errors carry; the routes that raise them document
# these instead of the bare `Problem`, so generated clients type the members.


class SessionConflictProblem(Problem):
    """A 409 about a session: `session_busy` names `active_run_id`; `idempotency_conflict`
    names the reused `idempotency_key`."""

    active_run_id: Omittable[str] = Field(default=None, description="`session_busy`")
    idempotency_key: Omittable[str] = Field(default=None, description="`idempotency_conflict`")


class RunConflictProblem(SessionConflictProblem):
    """A 409 of run creation: `session_busy` (with `active_run_id`), `session_pending` (with
    `pending_tool_calls`), `idempotency_conflict` (with `idempotency_key`) or `conflict`."""

    pending_tool_calls: Omittable[list[PendingToolCall]] = Field(
        default=None, description="`session_pending`: the tool calls without results")


class RunStateProblem(Problem):
    """A 409 about a run's state: `run_finished`, `run_not_waiting` (with `run_status`),
    `input_backlog`."""

    run_status: Omittable[str] = Field(default=None, description="`run_not_waiting`")


class ToolCallMismatchProblem(ValidationProblem):
    """A 422 `tool_call_mismatch` (naming the ids at fault) or `validation_error`."""

    tool_call_id: Omittable[str] = Field(
        default=None, description="the id answered twice, or not open")
    open_tool_call_ids: Omittable[list[str]] = Field(
        default=None, description="the calls still open, for an id that is not")
    missing_tool_call_ids: Omittable[list[str]] = Field(
        default=None, description="open calls the request left without an output")


class AgentConflictProblem(Problem):
    """A 409 about an agent: `agent_exists` (with `agent`) or `conflict` (with
    `active_runs`)."""

    agent: Omittable[str] = Field(default=None, description="`agent_exists`")
    active_runs: Omittable[int] = Field(default=None, description="`conflict`")


class DeliveryConflictProblem(Problem):
    """A 409 `delivery_not_dead`, naming the delivery's `delivery_status`."""

    delivery_status: Omittable[str] = None


class UnavailableProblem(Problem):
    """A 503; a compaction whose summary failed says `reason: "summary_failed"`."""

    reason: Omittable[str] = None
