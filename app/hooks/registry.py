"""The hooks that apply to a run, read from the store and kept for a moment.

A run starts with one read of the enabled gating hooks of its owner (and the admins' hooks
for every owner), kept for `TTL_S` so a busy service does not read them for every run; a
hook written through this process's API is seen at once (`changed`), one written through
another process within `TTL_S`.
"""

from __future__ import annotations

import time
from fnmatch import fnmatchcase

import sqlalchemy as sa

from app.hooks.gating import GatingHook
from app.store.db import Database
from app.store.tables import Hook

TTL_S = 1.0
GATING = ("pre_tool", "post_tool")
HOOKS: sa.Table = Hook.__table__  # type: ignore[attr-defined]
_GATING_OF = (
    sa.select(HOOKS)
    .where(HOOKS.c.enabled.is_(True), HOOKS.c.phase.in_(GATING),
           sa.or_(HOOKS.c.owner == sa.bindparam("owner"), HOOKS.c.all_owners.is_(True)))
    .order_by(HOOKS.c.created_at, HOOKS.c.id))

_generation = 0


def changed() -> None:
    """A hook was created, changed or deleted here: forget what was read."""
    global _generation
    _generation += 1


class HookRegistry:
    """The gating hooks by owner, read at most every `TTL_S`."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._cache: dict[str, tuple[float, int, list[tuple[tuple[str, ...], GatingHook]]]] = {}

    async def gating(self, owner: str, agent: str) -> list[GatingHook]:
        """The enabled `pre_tool` and `post_tool` hooks of a run of `agent`, oldest first."""
        now = time.monotonic()
        cached = self._cache.get(owner)
        if cached is None or now - cached[0] > TTL_S or cached[1] != _generation:
            generation = _generation
            async with self.database.read() as db:
                connection = await db.connection()
                rows = (await connection.execute(_GATING_OF, {"owner": owner})).all()
            hooks = [(tuple(row.agents), GatingHook(
                id=row.id, phase=row.phase, url=row.url, secret=row.secret,
                tools=tuple(row.tools), timeout_ms=row.timeout_ms,
                failure_mode=row.failure_mode,
                circuit_until=row.circuit_until if row.circuit == "open" else None))
                for row in rows]
            cached = (now, generation, hooks)
            self._cache[owner] = cached
        return [hook for agents, hook in cached[2]
                if not agents or any(fnmatchcase(agent, glob) for glob in agents)]
