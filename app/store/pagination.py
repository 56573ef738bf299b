"""Keyset pagination for newest-first lists, with opaque cursors."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

from app.errors import BadRequest

Row = TypeVar("Row")
_ID = re.compile(r"^[a-z]{2,5}_[A-Za-z0-9_-]{1,64}$")


def encode_cursor(created_at: datetime, row_id: str) -> str:
    moment = created_at.astimezone(UTC).isoformat(timespec="microseconds")
    raw = json.dumps([moment, row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Parse a cursor from `encode_cursor`; anything else is a 400 `bad_request`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        moment, row_id = json.loads(raw)
        parsed = datetime.fromisoformat(moment)
        if not isinstance(row_id, str) or not _ID.match(row_id) or parsed.tzinfo is None:
            raise ValueError(cursor)
        return parsed.astimezone(UTC), row_id
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed cursor {cursor[:80]!r}") from exc


async def newest_first(
    db: AsyncSession, query: SelectOfScalar[Row], model: Any, limit: int, cursor: str | None
) -> tuple[Sequence[Row], str | None]:
    """Run `query` newest first (by `created_at`, then `id`), one page after `cursor`."""
    if cursor:
        moment, row_id = decode_cursor(cursor)
        query = query.where(
            sa.or_(model.created_at < moment,
                   sa.and_(model.created_at == moment, model.id < row_id))
        )
    query = query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
    rows = list((await db.exec(query)).all())
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(last.created_at, last.id)  # type: ignore[attr-defined]
