"""Documented error responses for `responses=` (rendered as problem+json by `app.openapi`)."""

from __future__ import annotations

from typing import Any

from app.schemas.common import Problem, ValidationProblem

_DESCRIPTIONS = {
    400: "Malformed JSON, a malformed cursor or a bad header value (`bad_request`)",
    401: "Missing or invalid bearer token (`unauthorized`)",
    403: "Valid token, but not allowed (`forbidden`)",
    404: "Unknown id, or owned by another principal (`not_found`)",
    408: "The request body did not arrive within `LOOMD_BODY_READ_TIMEOUT_S` "
         "(`request_timeout`)",
    409: "State conflict",
    413: "Request body over the size cap (`body_too_large`)",
    422: "Invalid payload (`validation_error`, with `errors`)",
    429: "Too many runs running or queued (`backpressure`, with `Retry-After`)",
    503: "The runtime is paused (`runtime_paused`, for new runs), the service is shutting "
         "down or a dependency is down (`unavailable`); with `Retry-After`",
}


def errors(
    *statuses: int, problems: dict[int, type[Problem]] | None = None, **descriptions: str
) -> dict[int | str, dict[str, Any]]:
    """`responses=` for the given statuses; a `s409="…"` keyword overrides a description, and
    `problems` names the schema of a status whose problems carry extra members."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        model = (problems or {}).get(status) or (ValidationProblem if status == 422 else Problem)
        documented[status] = {
            "description": descriptions.get(f"s{status}", _DESCRIPTIONS[status]),
            "model": model,
        }
    return documented


AUTH = (401,)
READ = (400, 401, 404, 422)
WRITE = (400, 401, 404, 408, 413, 422)
