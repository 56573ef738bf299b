"""The requests loomd sends to hooks, for the OpenAPI document's `webhooks` section.

Every request is signed per Standard Webhooks: `webhook-id` (the same on every attempt of
one delivery), `webhook-timestamp` and `webhook-signature` (`v1,<base64 HMAC-SHA256>` of
`{id}.{timestamp}.{body}` keyed with the hook's secret).
"""

from __future__ import annotations

from fastapi import APIRouter

from app.schemas.hook_calls import (
    EventDelivery,
    Ping,
    PostToolAnswer,
    PostToolRequest,
    PreToolAnswer,
    PreToolRequest,
)

router = APIRouter(tags=["hooks"],
                   generate_unique_id_function=lambda route: f"hooks-{route.name}")


@router.post("pre_tool", name="pre_tool", response_model=PreToolAnswer, responses={
    204: {"description": "allow the call"},
    "default": {"description": "any other answer, a timeout or an error is a failure of the "
                "hook, handled by its `failure_mode`"}})
def pre_tool(body: PreToolRequest) -> None:
    """Before a matching tool call: allow, deny (the reason reaches the model), modify the
    arguments (the next hook sees them), or ask for a human approval."""


@router.post("post_tool", name="post_tool", response_model=PostToolAnswer, responses={
    204: {"description": "keep the result"}})
def post_tool(body: PostToolRequest) -> None:
    """After a matching tool call: keep the result, or replace its output."""


@router.post("event", name="event", status_code=204, responses={
    "default": {"description": "a non-2xx answer or a timeout is retried with backoff"}})
def event(body: EventDelivery) -> None:
    """An event the hook listens to; answer 2xx within `timeout_ms`."""


@router.post("ping", name="ping", status_code=204)
def ping(body: Ping) -> None:
    """`POST /v1/hooks/{hook_id}/test`."""
