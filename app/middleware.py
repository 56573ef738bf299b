"""The outermost ASGI layer: request ids, body caps and read timeouts, last-resort 500s and
the access log."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import internal_error_response, problem
from app.request_context import RequestInfo, bind_request_id, reset_request_id

REQUEST_INFO_KEY = "loomd.request"
DEFAULT_BODY_READ_TIMEOUT_S = 30.0
_VALID_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,200}$")
access_logger = logging.getLogger("loomd.access")
error_logger = logging.getLogger("loomd.errors")


class BodyOverflow(HTTPException):
    """Raised from `receive` when a body without a usable Content-Length passes the cap.

    It is an HTTPException so the framework re-raises it instead of calling it bad JSON.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds the limit of {limit} bytes")


class BodyReadTimeout(HTTPException):
    """Raised from `receive` when the body has not fully arrived in time (408)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            408, f"the request body did not arrive within {timeout_s:g} s",
            headers={"Connection": "close"},
        )


class RequestContextMiddleware:
    """Per request: an `X-Request-ID`, the body cap and read timeout, one access log line,
    no leaked traces."""

    def __init__(self, app: ASGIApp, max_body_bytes: int,
                 uncapped_paths: Collection[str] = ()) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.uncapped_paths = frozenset(uncapped_paths)
        """Paths whose routes hold their bodies to caps of their own, as they read them."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        info = RequestInfo(request_id=request_id)
        scope[REQUEST_INFO_KEY] = info
        token = bind_request_id(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            limit = None if scope["path"] in self.uncapped_paths else self.max_body_bytes
            declared = _content_length(scope)
            if limit is not None and declared is not None and declared > limit:
                response = problem(
                    413, "body_too_large", "Body too large",
                    f"the request body ({declared} bytes) exceeds the limit of "
                    f"{self.max_body_bytes} bytes", headers={"Connection": "close"},
                )
                await response(scope, receive, send_with_id)
            elif (rejection := _nul_in_url(scope)) is not None:
                await rejection(scope, receive, send_with_id)
            else:
                # An uncapped body (a snapshot's envelope) may be large: its parts only
                # need to keep coming, each within the timeout of the one before.
                body_receive = self._guarded(receive, _body_read_timeout_s(scope), limit,
                                             idle=limit is None)
                await self.app(scope, body_receive, send_with_id)
        except BodyReadTimeout as exc:
            # Raised outside the framework's handlers (a body read by other code).
            if not response_started:
                await problem(408, "request_timeout", "Request timeout", str(exc.detail),
                              headers={"Connection": "close"})(scope, receive, send_with_id)
        except Exception:
            error_logger.exception("unhandled error")
            if not response_started:
                await internal_error_response()(scope, receive, send_with_id)
        finally:
            access_logger.info(
                "request",
                extra={
                    "method": scope["method"], "path": scope["path"], "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "request_id": request_id, "subject": info.subject,
                },
            )
            reset_request_id(token)

    def _guarded(self, receive: Receive, timeout_s: float, limit: int | None,
                 idle: bool = False) -> Receive:
        """`receive` with the body cap, and a deadline for the whole body (with `idle`,
        for each part of it: the deadline moves on with every part received).

        The deadline runs from the first read of the body, so a client that sends the
        headers and then stalls, or trickles the body, gets a 408 instead of holding the
        connection. Once the body is complete, `receive` only waits for the disconnect,
        which has no deadline (streams stay open as long as the client wants).
        """
        received = 0
        deadline: float | None = None
        body_complete = False

        async def guarded_receive() -> Message:
            nonlocal received, deadline, body_complete
            if body_complete:
                return await receive()
            loop = asyncio.get_running_loop()
            if deadline is None or idle:
                deadline = loop.time() + timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyReadTimeout(timeout_s) from None
            if message["type"] != "http.request":
                body_complete = True
                return message
            received += len(message.get("body", b""))
            if limit is not None and received > limit:
                raise BodyOverflow(limit)
            body_complete = not message.get("more_body", False)
            return message

        return guarded_receive


class ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's CORS handling, with a refused preflight answered as problem+json.

    It runs outside `RequestContextMiddleware`, so it gives the refusal its own request id.
    """

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        refused = bytes(response.body).decode().removeprefix("Disallowed CORS ")
        headers = {k: v for k, v in response.headers.items()
                   if k.lower().startswith("access-control-") or k.lower() == "vary"}
        value = request_headers.get("x-request-id")
        request_id = value if value and _VALID_REQUEST_ID.match(value) else uuid.uuid4().hex
        token = bind_request_id(request_id)
        try:
            return problem(
                400, "cors_rejected", "CORS preflight rejected",
                f"this preflight is refused: disallowed {refused} (allowed origins come "
                "from LOOMD_CORS_ORIGINS)",
                headers={**headers, "X-Request-ID": request_id},
            )
        finally:
            reset_request_id(token)


def _body_read_timeout_s(scope: Scope) -> float:
    """`LOOMD_BODY_READ_TIMEOUT_S` of the app being served (Starlette puts it in the scope)."""
    settings = getattr(getattr(scope.get("app"), "state", None), "settings", None)
    return float(getattr(settings, "body_read_timeout_s", DEFAULT_BODY_READ_TIMEOUT_S))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _incoming_request_id(scope: Scope) -> str | None:
    value = _header(scope, b"x-request-id")
    return value if value and _VALID_REQUEST_ID.match(value) else None


def _nul_in_url(scope: Scope) -> Response | None:
    """A problem for a URL holding a NUL character, which no id, name or filter contains.

    Postgres cannot even compare text with NUL in it, so such values never reach a query.
    """
    if "\x00" in scope["path"]:
        return problem(404, "not_found", "Not found", "no such route")
    query = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        return problem(400, "bad_request", "Bad request",
                       "query parameters may not contain NUL characters")
    return None


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    return int(value) if value and value.strip().isdigit() else None
