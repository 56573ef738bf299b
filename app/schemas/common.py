"""Shared schema pieces: strict request bases, timestamps, pages and the problem body."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    model_validator,
)

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
Metadata = Annotated[
    dict[str, Any],
    Field(description="free-form JSON object stored with the resource (at most 64 keys)",
          max_length=64),
]


class UnstorableValue(ValueError):
    """A value no backend can store as JSON; `path` locates it inside the validated input."""

    def __init__(self, path: tuple[str | int, ...], reason: str) -> None:
        super().__init__(reason)
        self.path = path


def check_storable(value: Any, path: tuple[str | int, ...] = ()) -> None:
    """Raise `UnstorableValue` for NUL characters, NaN or Infinity anywhere in `value`.

    Postgres stores none of them in text or JSONB, so they are refused on every backend.
    """
    if isinstance(value, str):
        if "\x00" in value:
            raise UnstorableValue(path, "must not contain NUL (U+0000) characters")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise UnstorableValue(path, f"must be a finite number, not {value}")
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                raise UnstorableValue(path, "keys must not contain NUL (U+0000) characters")
            check_storable(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_storable(item, (*path, index))


class RequestModel(BaseModel):
    """Base for request bodies: unknown fields are an error, so typos surface.

    Values Postgres cannot store (NUL characters, NaN, Infinity) are rejected up front
    instead of failing at write time.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        check_storable(data)
        return data


class ResponseModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


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
