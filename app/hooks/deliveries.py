"""The delivery log of hooks (`GET /v1/hooks/{hook_id}/deliveries`), as writer writes."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.clock import utcnow
from app.hooks.gating import Delivery
from app.hooks.sender import count_outcome
from app.store.tables import Hook, HookDelivery

DELIVERIES: sa.Table = HookDelivery.__table__  # type: ignore[attr-defined]
HOOKS: sa.Table = Hook.__table__  # type: ignore[attr-defined]
_INSERT = sa.insert(DELIVERIES)
_HOOK_EXISTS = sa.select(HOOKS.c.id).where(HOOKS.c.id == sa.bindparam("id"))


def log_delivery(connection: Connection, delivery: Delivery) -> None:
    """Store one finished call of a gating hook (a hook deleted meanwhile has no log)."""
    exists = connection.execute(_HOOK_EXISTS, {"id": delivery.hook_id}).first()
    if exists is None:
        return
    now = utcnow()
    connection.execute(_INSERT, {
        "id": delivery.id, "hook_id": delivery.hook_id, "message_id": delivery.message_id,
        "ordinal": 0,
        "phase": delivery.phase, "event_type": delivery.phase, "run_id": delivery.run_id,
        "payload": delivery.payload, "status": delivery.status, "attempt": 1,
        "status_code": delivery.status_code, "duration_ms": delivery.duration_ms,
        "error": delivery.error, "response_excerpt": delivery.response_excerpt,
        "next_attempt_at": None, "created_at": now, "updated_at": now})
    count_outcome(connection, delivery.hook_id, delivery.status == "delivered", now)
