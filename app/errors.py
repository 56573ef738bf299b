"""Errors as data, rendered as RFC 9457 problem+json with a stable `code`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.request_context import current_request_id
from app.schemas.common import UnstorableValue
from app.store.db import is_transient

PROBLEM_JSON = "application/problem+json"
logger = logging.getLogger("loomd.errors")


class AppError(Exception):
    """Base of every error the API reports; subclasses fix the status, code and title."""

    status_code = 500
    code = "internal_error"
    title = "Internal error"

    def __init__(
        self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


class BadRequest(AppError):
    status_code, code, title = 400, "bad_request", "Bad request"


class Unauthorized(AppError):
    status_code, code, title = 401, "unauthorized", "Unauthorized"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"}, **extra)


class Forbidden(AppError):
    status_code, code, title = 403, "forbidden", "Forbidden"


class NotFound(AppError):
    status_code, code, title = 404, "not_found", "Not found"


class Conflict(AppError):
    status_code, code, title = 409, "conflict", "Conflict"


class AgentExists(Conflict):
    code, title = "agent_exists", "Agent exists"


class SessionBusy(Conflict):
    code, title = "session_busy", "Session busy"


class IdempotencyConflict(Conflict):
    code, title = "idempotency_conflict", "Idempotency key reused"


class BodyTooLarge(AppError):
    status_code, code, title = 413, "body_too_large", "Body too large"


class ValidationFailed(AppError):
    """A payload that is well-formed JSON but invalid; `errors` name the fields."""

    status_code, code, title = 422, "validation_error", "Validation error"

    def __init__(self, detail: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(detail, errors=errors)

    @classmethod
    def at(cls, loc: list[str | int], msg: str, type_: str = "value_error") -> ValidationFailed:
        """A single-field validation error at `loc` (e.g. `["body", "tools", 0, "name"]`)."""
        where = ".".join(str(part) for part in loc[1:]) or str(loc[0])
        return cls(f"{where}: {msg}", [{"loc": loc, "msg": msg, "type": type_}])


class Unavailable(AppError):
    status_code, code, title = 503, "unavailable", "Service unavailable"


class RuntimePaused(AppError):
    status_code, code, title = 503, "runtime_paused", "Runtime paused"


class AlreadyPaused(Conflict):
    code, title = "already_paused", "Already paused"


class NotPaused(Conflict):
    code, title = "not_paused", "Not paused"


class SnapshotTooLarge(AppError):
    status_code, code, title = 413, "snapshot_too_large", "Snapshot too large"


class SnapshotVersionUnsupported(AppError):
    status_code, code, title = 422, "snapshot_version_unsupported", "Snapshot version unsupported"


class SnapshotCorrupt(AppError):
    status_code, code, title = 422, "snapshot_corrupt", "Snapshot corrupt"


_STATUS_CODES = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    406: ("not_acceptable", "Not acceptable"),
    408: ("request_timeout", "Request timeout"),
    409: ("conflict", "Conflict"),
    413: ("body_too_large", "Body too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    422: ("validation_error", "Validation error"),
    429: ("backpressure", "Too many requests"),
    503: ("unavailable", "Service unavailable"),
}


def problem(
    status: int, code: str, title: str, detail: str,
    headers: dict[str, str] | None = None, **extra: Any,
) -> JSONResponse:
    """Build a problem+json response carrying the current request id."""
    body = {
        "type": f"urn:loomd:error:{code}", "title": title, "status": status,
        "detail": detail, "code": code, "request_id": current_request_id(), **extra,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def internal_error_response() -> JSONResponse:
    """The 500 response: never a stack trace, always the request id to look it up by."""
    return problem(500, "internal_error", "Internal error",
                   "an unexpected error occurred; the request id locates it in the logs")


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for error in exc.errors():
        item = {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""),
                "type": error.get("type", "value_error")}
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, UnstorableValue):
            item.update(loc=[*item["loc"], *cause.path], msg=str(cause), type=cause.type)
        elif "ctx" in error:
            item["ctx"] = _json_safe(error["ctx"])
        errors.append(item)
    return errors


async def _app_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return problem(exc.status_code, exc.code, exc.title, exc.detail, exc.headers, **exc.extra)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path.

    The router's own 405 names only the methods of the first route whose path matches,
    although other routes may serve the same path with other methods; so ask every route
    whether it would take the path with each method.
    """
    allowed = []
    for method in _METHODS:
        probe = {"type": "http", "method": method, "path": request.scope["path"],
                 "root_path": request.scope.get("root_path", ""), "headers": [],
                 "query_string": b""}
        if any(route.matches(dict(probe))[0] is Match.FULL for route in request.app.routes):
            allowed.append(method)
    return allowed


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code, title = _STATUS_CODES.get(exc.status_code, ("http_error", "HTTP error"))
    if exc.status_code >= 500:
        return internal_error_response()
    detail = exc.detail if isinstance(exc.detail, str) else title
    headers = dict(exc.headers or {})
    if exc.status_code == 404 and detail == "Not Found":
        detail = "no such route"
    if exc.status_code == 405:
        allowed = _allowed_methods(request)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
        detail = f"{request.method} is not allowed here (allowed: {headers.get('Allow', '-')})"
    return problem(exc.status_code, code, title, detail, headers)


def _is_json(request: Request) -> bool:
    """Whether the request declares a JSON body (`application/json` or `+json`)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json"))


async def _request_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _validation_errors(exc)
    if any(error["loc"][:1] == ["path"] for error in errors):
        # An id or name that cannot be valid names nothing: not found, like an unknown one.
        return problem(404, "not_found", "Not found", f"{request.url.path[:200]} not found")
    if errors and all(error["loc"] == ["query", "cursor"] for error in errors):
        return problem(400, "bad_request", "Bad request", "malformed cursor")
    if any(error["type"] == "json_invalid" for error in errors):
        reason = next((e.get("ctx", {}).get("error") for e in errors if "ctx" in e), None)
        detail = f"the body is not valid JSON ({reason})" if reason else "invalid JSON"
        return problem(400, "bad_request", "Bad request", detail)
    if not _is_json(request) and any(
            error["loc"] == ["body"] and error["type"] != "missing" for error in errors):
        # A body that is not an object because it was not sent as JSON (curl's `-d` sends
        # it as a form): say what to send rather than how the bytes failed to validate.
        sent = request.headers.get("content-type") or "none"
        return problem(415, "unsupported_media_type", "Unsupported media type",
                       f"the body must be JSON: send Content-Type: application/json "
                       f"(got {sent[:100]})")
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(part) for part in first["loc"])
    detail = f"{where}: {first['msg']}" if where else str(first["msg"])
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    return problem(422, "validation_error", "Validation error", detail, errors=errors)


async def _database_error(_request: Request, exc: Exception) -> JSONResponse:
    """A database that is down for a moment is a 503 to retry, not a bug."""
    if not is_transient(exc):
        raise exc
    return problem(503, "unavailable", "Service unavailable",
                   "the database is not reachable right now; retry shortly",
                   {"Retry-After": "1"})


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the framework or the code raises through problem+json."""
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
