"""Migrations build the schema the code expects, on both databases."""

import asyncio

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

from app.main import create_app
from app.store.migrate import SchemaOutdated, current_revision, downgrade, head_revision, upgrade
from tests.conftest import lifespan_of, make_settings

EXPECTED_TABLES = {
    "api_keys", "agents", "agent_versions", "sessions", "messages", "runs", "run_events",
    "idempotency_keys", "alembic_version",
}


async def _inspect(url: str) -> tuple[set[str], list, str | None, set[str]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            def read(sync_connection):
                inspector = inspect(sync_connection)
                tables = set(inspector.get_table_names())
                run_columns = {c["name"] for c in inspector.get_columns("runs")} if (
                    "runs" in tables) else set()
                diff = compare_metadata(MigrationContext.configure(sync_connection),
                                        SQLModel.metadata)
                return tables, diff, run_columns

            tables, diff, run_columns = await connection.run_sync(read)
        revision = await current_revision(engine)
    finally:
        await engine.dispose()
    return tables, diff, revision, run_columns


class TestUpgradeFromEmpty:
    async def test_upgrade_creates_every_table_at_head(self, empty_database_url):
        await asyncio.to_thread(upgrade, empty_database_url)
        tables, diff, revision, _ = await _inspect(empty_database_url)
        assert tables >= EXPECTED_TABLES
        assert revision == head_revision()
        assert diff == [], f"the models and the migrations disagree: {diff}"

    async def test_runs_carry_an_executor_and_a_lease_from_the_first_migration(
        self, empty_database_url
    ):
        await asyncio.to_thread(upgrade, empty_database_url)
        _, _, _, run_columns = await _inspect(empty_database_url)
        assert {"executor_id", "lease_expires_at"} <= run_columns

    async def test_downgrade_to_base_and_upgrade_again(self, empty_database_url):
        await asyncio.to_thread(upgrade, empty_database_url)
        await asyncio.to_thread(downgrade, empty_database_url, "base")
        tables, _, revision, _ = await _inspect(empty_database_url)
        assert revision is None
        assert tables <= {"alembic_version"}
        await asyncio.to_thread(upgrade, empty_database_url)
        assert (await _inspect(empty_database_url))[2] == head_revision()

    async def test_upgrade_twice_is_a_no_op(self, empty_database_url):
        await asyncio.to_thread(upgrade, empty_database_url)
        await asyncio.to_thread(upgrade, empty_database_url)
        assert (await _inspect(empty_database_url))[2] == head_revision()


class TestOutdatedSchema:
    async def test_app_refuses_to_start_on_an_empty_database(self, empty_database_url):
        app = create_app(make_settings(empty_database_url, auto_migrate=False))
        with pytest.raises(SchemaOutdated, match="loomd migrate"):
            async with lifespan_of(app):
                pass
