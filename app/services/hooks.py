"""Hooks (§6): register, read, change and delete them; list, ping and retry deliveries.

Every request to a hook is signed per Standard Webhooks with the hook's own secret, shown
only when the hook is created. The run core loads the hooks that apply to a run with
`matching_hooks` (and narrows them with `matches_tool` or `wants_event`).
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from fnmatch import fnmatchcase
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.auth import Principal
from app.clock import utcnow
from app.config import Settings
from app.errors import Conflict, NotFound, ValidationFailed
from app.hooks.attempt import post_signed
from app.ids import new_id
from app.schemas.hooks import HookCreate, HookUpdate, phase_problem
from app.store.db import Database
from app.store.pagination import newest_first
from app.store.tables import Hook, HookDelivery
from app.tools import net
from app.tools.url_guard import PrivateUrl, check_public_url

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24


class DeliveryNotDead(Conflict):
    code, title = "delivery_not_dead", "Delivery not dead"


Changed = Callable[[], Awaitable[None]]
"""Told that hooks changed (the run manager re-reads them)."""


def new_secret() -> str:
    """`whsec_` and the base64 of 24 random bytes: a Standard Webhooks signing key."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def default_failure_mode(phase: str) -> str:
    """`closed` for `pre_tool` (a tool does not run while its guard is down), else `open`."""
    return "closed" if phase == "pre_tool" else "open"


# -- matching (for the run core) -------------------------------------------------------------


def globs_match(globs: Iterable[str], name: str) -> bool:
    """Whether `name` matches one of `globs` (`*` wildcards, case-sensitive); none: all."""
    patterns = list(globs)
    return not patterns or any(fnmatchcase(name, pattern) for pattern in patterns)


def matches_tool(hook: Hook, tool: str) -> bool:
    """Whether a `pre_tool`/`post_tool` hook gates calls of `tool`."""
    return globs_match(hook.tools, tool)


def wants_event(hook: Hook, event_type: str) -> bool:
    """Whether an `event` hook receives events of `event_type` (`run.state` included)."""
    return event_type in hook.events


async def matching_hooks(database: Database, owner: str, agent: str, phase: str) -> list[Hook]:
    """The enabled hooks of `phase` that apply to a run of `owner`'s `agent`: the owner's
    and the admins' `all_owners` hooks whose `agents` match, oldest first (creation order)."""
    query = (
        select(Hook)
        .where(Hook.phase == phase, col(Hook.enabled).is_(True),
               sa.or_(col(Hook.owner) == owner, col(Hook.all_owners).is_(True)))
        .order_by(col(Hook.created_at), col(Hook.id))
    )
    async with database.read() as db:
        rows = (await db.exec(query)).all()
    return [hook for hook in rows if globs_match(hook.agents, agent)]


# -- hooks -----------------------------------------------------------------------------------


async def check_hook_url(url: str, settings: Settings) -> None:
    """Refuse a URL that reaches a private address (422 at `body.url`, type `private_url`).

    It resolves the host name (up to 2 s), so callers run it before opening a write session.
    """
    try:
        await check_public_url(url, settings.allow_private_urls)
    except PrivateUrl as exc:
        raise ValidationFailed.at(["body", "url"], str(exc), "private_url") from exc


async def _load(db: AsyncSession, principal: Principal, hook_id: str, lock: bool = False
                ) -> Hook:
    query = select(Hook).where(Hook.id == hook_id)
    if lock:
        query = query.with_for_update()
    hook = (await db.exec(query)).first()
    if hook is None or not principal.can_see(hook.owner):
        raise NotFound(f"hook {hook_id} not found")
    return hook


async def get_hook(db: AsyncSession, principal: Principal, hook_id: str) -> Hook:
    """The hook; 404 when absent or another owner's (admins see every hook)."""
    return await _load(db, principal, hook_id)


async def create_hook(
    database: Database, settings: Settings, owner: str, body: HookCreate, changed: Changed,
) -> Hook:
    """A new hook of `owner` with a new secret; the URL is checked before anything is
    written. `changed` is awaited once it is committed (runs and events then see it)."""
    url = str(body.url)
    await check_hook_url(url, settings)
    now = utcnow()
    hook = Hook(
        id=new_id("hook"), owner=owner, all_owners=body.all_owners, name=body.name,
        phase=body.phase, url=url, agents=body.agents, tools=body.tools, events=body.events,
        timeout_ms=body.timeout_ms,
        failure_mode=body.failure_mode or default_failure_mode(body.phase),
        enabled=body.enabled, secret=new_secret(), created_at=now, updated_at=now,
    )
    async with database.transaction() as db:
        db.add(hook)
    await changed()
    return hook


async def list_hooks(
    db: AsyncSession, owner: str | None, limit: int, cursor: str | None
) -> tuple[Sequence[Hook], str | None]:
    """Hooks of `owner`, or of every owner when `owner` is None (admins), newest first."""
    query = select(Hook)
    if owner is not None:
        query = query.where(Hook.owner == owner)
    return await newest_first(db, query, Hook, limit, cursor)


def _check_phase_fields(phase: str, changes: dict[str, Any]) -> None:
    for field in ("tools", "events"):
        if field in changes:
            problem = phase_problem(phase, field, changes[field])
            if problem is not None:
                raise ValidationFailed.at(["body", field], *problem)


async def update_hook(
    database: Database, settings: Settings, principal: Principal, hook_id: str,
    body: HookUpdate, changed: Changed,
) -> Hook:
    """Apply the fields present; a new URL is checked before the hook is locked."""
    changes = body.changes()
    if "url" in changes:
        await check_hook_url(changes["url"], settings)
    async with database.transaction() as db:
        hook = await _load(db, principal, hook_id, lock=True)
        _check_phase_fields(hook.phase, changes)
        if all(getattr(hook, field) == value for field, value in changes.items()):
            return hook
        for field, value in changes.items():
            setattr(hook, field, value)
        hook.updated_at = utcnow()
        db.add(hook)
    await changed()
    return hook


async def delete_hook(database: Database, principal: Principal, hook_id: str,
                      changed: Changed) -> None:
    """Delete the hook and its deliveries; 404 when absent or another owner's."""
    async with database.transaction() as db:
        hook = await _load(db, principal, hook_id, lock=True)
        await db.delete(hook)
    await changed()


# -- deliveries ------------------------------------------------------------------------------


async def list_deliveries(
    db: AsyncSession, principal: Principal, hook_id: str, limit: int, cursor: str | None
) -> tuple[Sequence[HookDelivery], str | None]:
    """The hook's deliveries, newest first."""
    hook = await _load(db, principal, hook_id)
    query = select(HookDelivery).where(HookDelivery.hook_id == hook.id)
    return await newest_first(db, query, HookDelivery, limit, cursor)


async def retry_delivery(
    db: AsyncSession, principal: Principal, hook_id: str, delivery_id: str
) -> HookDelivery:
    """Queue a `dead` delivery again (`pending`, due now; its attempts so far stay);
    409 `delivery_not_dead` for any other status."""
    hook = await _load(db, principal, hook_id)
    query = select(HookDelivery).where(
        HookDelivery.id == delivery_id, HookDelivery.hook_id == hook.id).with_for_update()
    delivery = (await db.exec(query)).first()
    if delivery is None:
        raise NotFound(f"hook {hook_id} has no delivery {delivery_id}")
    if delivery.status != "dead":
        raise DeliveryNotDead(
            f"delivery {delivery_id} is {delivery.status}; only a dead delivery is retried",
            delivery_status=delivery.status)
    now = utcnow()
    delivery.status = "pending"
    delivery.next_attempt_at = now
    delivery.updated_at = now
    db.add(delivery)
    await db.flush()
    return delivery


async def ping(
    database: Database, settings: Settings, principal: Principal, hook_id: str
) -> HookDelivery:
    """Send a signed `ping` to the hook now, enabled or not and whatever its circuit, and
    record it as a delivery (`delivered` for a 2xx answer, else `failed`). No write session
    is open while the request is under way."""
    async with database.read() as db:
        hook = await _load(db, principal, hook_id)
    created_at = utcnow()
    payload = {"type": "ping", "hook_id": hook.id, "owner": hook.owner}
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    message_id = new_id("msg")
    async with net.client(net.HostPolicy.any_public(settings), hook.timeout_ms / 1000,
                          follow_redirects=False) as client:
        attempt = await post_signed(client, hook.url, hook.secret, message_id, body,
                                    hook.timeout_ms)
    delivery = HookDelivery(
        id=new_id("dlv"), hook_id=hook.id, message_id=message_id, phase="ping",
        event_type="ping", payload=payload,
        status="delivered" if attempt.delivered else "failed", attempt=1,
        status_code=attempt.status_code, duration_ms=attempt.duration_ms,
        error=attempt.error, response_excerpt=attempt.excerpt,
        created_at=created_at, updated_at=utcnow(),
    )
    async with database.transaction() as db:
        # Deleted while the ping was under way: there is nothing to record it with.
        await _load(db, principal, hook_id, lock=True)
        db.add(delivery)
    return delivery
