"""Alembic, driven from code: the scripts are found next to the installed package."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations

SCRIPT_LOCATION = Path(migrations.__file__).resolve().parent


class SchemaOutdated(RuntimeError):
    """The database is not at the migration head and auto-migration is off."""


def alembic_config(database_url: str) -> Config:
    """An Alembic config for `database_url` that works from any working directory."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision`. Call where no event loop runs in this thread."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Revert migrations down to `revision` (used by tests and operators)."""
    command.downgrade(alembic_config(database_url), revision)


@lru_cache(maxsize=1)
def head_revision() -> str | None:
    """The newest revision shipped with this code."""
    return ScriptDirectory(str(SCRIPT_LOCATION)).get_current_head()


def _current_revision(connection: sa.Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    async with engine.connect() as connection:
        return await connection.run_sync(_current_revision)


async def ensure_current(engine: AsyncEngine) -> None:
    """Raise `SchemaOutdated` unless the database is at the head revision."""
    current, head = await current_revision(engine), head_revision()
    if current != head:
        raise SchemaOutdated(
            f"the database schema is at revision {current or 'none (empty database)'}, "
            f"this loomd needs {head}: run `loomd migrate` (or start with "
            "LOOMD_AUTO_MIGRATE=true)"
        )
