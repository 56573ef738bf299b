"""Tool secrets: the key an owner's `http` tool calls are signed with (Standard Webhooks).

One per owner; creating one replaces the previous one at once. The secret itself is shown
only when it is created; the run core reads it to sign calls.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel.ext.asyncio.session import AsyncSession

from app.clock import utcnow
from app.errors import NotFound
from app.store.db import Database
from app.store.tables import ToolSecret

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
SHOWN_PREFIX_CHARS = 10


def new_secret() -> str:
    """`whsec_` and the base64 of 256 random bits, as Standard Webhooks signers take it."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def secret_prefix(secret: str) -> str:
    """The first characters of a secret, to tell secrets apart without showing them."""
    return secret[:SHOWN_PREFIX_CHARS]


async def rotate_secret(db: AsyncSession, owner: str) -> ToolSecret:
    """Create `owner`'s secret, or replace the one it has; returns the new row."""
    row = ToolSecret(owner=owner, secret=new_secret(), created_at=utcnow())
    values = {"owner": row.owner, "secret": row.secret, "created_at": row.created_at}
    dialect: Any = postgresql if db.get_bind().dialect.name == "postgresql" else sqlite
    # One statement, so two concurrent first creations cannot both insert.
    upsert = dialect.insert(ToolSecret).values(**values).on_conflict_do_update(
        index_elements=["owner"], set_={"secret": row.secret, "created_at": row.created_at})
    await db.exec(upsert)
    return row


async def get_secret(db: AsyncSession, owner: str) -> ToolSecret:
    """`owner`'s secret row; 404 `not_found` when it has none."""
    row = await db.get(ToolSecret, owner)
    if row is None:
        raise NotFound(f"{owner} has no tool secret; create one with POST /v1/tool-secret")
    return row


async def read_secret(database: Database, owner: str) -> str | None:
    """The secret `owner`'s `http` tool calls are signed with, or None when it has none."""
    async with database.read() as db:
        row = await db.get(ToolSecret, owner)
        return None if row is None else row.secret
