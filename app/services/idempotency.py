"""Idempotency keys (§1.3): one resource per (subject, method, path, key) for 24 hours."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel.ext.asyncio.session import AsyncSession

from app.clock import utcnow
from app.errors import BadRequest, IdempotencyConflict
from app.store.tables import IdempotencyKey

TTL = timedelta(hours=24)


@dataclass(frozen=True)
class IdempotencyScope:
    subject: str
    method: str
    path: str
    key: str

    @classmethod
    def parse(
        cls, subject: str, method: str, path: str, key: str | None
    ) -> IdempotencyScope | None:
        """The scope of a request, or None without an `Idempotency-Key` header."""
        if key is None:
            return None
        if not 1 <= len(key) <= 255 or not key.isprintable():
            raise BadRequest("Idempotency-Key must be 1..255 printable characters")
        return cls(subject, method, path, key)


def request_hash(body: Any) -> str:
    """The hash of the body as canonical JSON (sorted keys, no whitespace)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def _prior(db: AsyncSession, scope: IdempotencyScope, digest: str) -> str | None:
    row = await db.get(
        IdempotencyKey, (scope.subject, scope.method, scope.path, scope.key), populate_existing=True
    )
    if row is None:
        return None
    if row.expires_at <= utcnow():
        await db.delete(row)
        await db.flush()
        return None
    if row.request_hash != digest:
        raise IdempotencyConflict(
            "this Idempotency-Key was used with a different request body",
            idempotency_key=scope.key,
        )
    return row.resource_id


async def once(
    db: AsyncSession, scope: IdempotencyScope | None, body: Any,
    create: Callable[[], Awaitable[str]],
) -> tuple[str, bool]:
    """Create the resource once per key; returns (resource id, replayed)."""
    if scope is None:
        return await create(), False
    digest = request_hash(body)
    prior = await _prior(db, scope, digest)
    if prior is not None:
        return prior, True
    now = utcnow()
    try:
        async with db.begin_nested():
            resource_id = await create()
            db.add(IdempotencyKey(
                subject=scope.subject, method=scope.method, path=scope.path, key=scope.key,
                request_hash=digest, resource_id=resource_id, created_at=now,
                expires_at=now + TTL,
            ))
            await db.flush()
    except IntegrityError:
        winner = await _prior(db, scope, digest)
        if winner is None:
            raise
        return winner, True
    return resource_id, False
