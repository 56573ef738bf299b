"""API keys: issued once, stored as a SHA-256 hash, looked up by hash, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.errors import NotFound
from app.ids import new_id
from app.store.pagination import newest_first
from app.store.tables import ApiKey

KEY_PREFIX = "lmd_"


def hash_key(key: str) -> str:
    """Keys carry 192 random bits, so an unsalted SHA-256 is a safe, indexable digest."""
    return hashlib.sha256(key.encode()).hexdigest()


async def create_key(db: AsyncSession, subject: str, role: str) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the plaintext key, which is never stored."""
    key = KEY_PREFIX + secrets.token_urlsafe(24)
    row = ApiKey(id=new_id("key"), subject=subject, role=role, key_hash=hash_key(key),
                 key_prefix=key[:10])
    db.add(row)
    await db.flush()
    return row, key


async def list_keys(
    db: AsyncSession, limit: int, cursor: str | None
) -> tuple[Sequence[ApiKey], str | None]:
    return await newest_first(db, select(ApiKey), ApiKey, limit, cursor)


async def delete_key(db: AsyncSession, key_id: str) -> None:
    row = await db.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"API key {key_id} not found")
    await db.delete(row)
    await db.flush()


async def find_key(db: AsyncSession, token: str) -> ApiKey | None:
    """The key row matching `token`, or None."""
    if not token.startswith(KEY_PREFIX):
        return None
    digest = hash_key(token)
    row = (await db.exec(select(ApiKey).where(ApiKey.key_hash == digest))).first()
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return row
