"""Test fixtures: every storage test runs on SQLite and on Postgres, each from a clean state.

Migrations run once per test session and backend: SQLite tests get a copy of a migrated
template file; Postgres tests share one migrated database that is truncated before each test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlmodel import SQLModel

from app.config import Settings
from app.main import create_app
from app.store import tables  # noqa: F401  (registers the tables)
from app.store.migrate import upgrade

ADMIN_TOKEN = "test-admin-token"
LIFESPAN_TIMEOUT_S = 60
"""How long an app's start-up or shutdown may take in a test: two test workers share the
cores with the servers some tests start, so a start-up may take seconds now and then."""
PG_SERVER = os.environ.get("LOOMD_TEST_POSTGRES", "postgres@127.0.0.1:5432")
BACKENDS = ("sqlite", "postgres")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend", choices=[*BACKENDS, "all"],
        default=os.environ.get("LOOMD_TEST_BACKEND", "all"),
        help="database backend(s) for storage tests (default: all)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--backend")
        metafunc.parametrize("backend", BACKENDS if chosen == "all" else (chosen,))


def postgres_url(database: str) -> str:
    return f"postgresql+asyncpg://{PG_SERVER}/{database}"


async def _pg_admin(sql: str) -> None:
    connection = await asyncpg.connect(f"postgresql://{PG_SERVER}/postgres")
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def create_postgres_database() -> str:
    """Create an empty, uniquely named database and return its name."""
    name = f"loomd_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    return name


def drop_postgres_database(name: str) -> None:
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "loomd.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    name = create_postgres_database()
    try:
        upgrade(postgres_url(name))
        yield name
    finally:
        drop_postgres_database(name)


_TRUNCATE = "TRUNCATE {} RESTART IDENTITY CASCADE".format(
    ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
)


async def _truncate(name: str) -> None:
    connection = await asyncpg.connect(f"postgresql://{PG_SERVER}/{name}")
    try:
        await connection.execute(_TRUNCATE)
    finally:
        await connection.close()


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database of `backend`, private to this test."""
    if backend == "sqlite":
        path = tmp_path / "loomd.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    name = request.getfixturevalue("postgres_database")
    asyncio.run(_truncate(name))
    return postgres_url(name)


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url, "admin_token": ADMIN_TOKEN,
        # Runs still active when a test ends are interrupted at once, not after 10 s.
        "shutdown_grace_s": 0.2,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with lifespan_of(application):
        yield application


def client_for(app: FastAPI, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://loomd.test", headers=headers
    )


@pytest.fixture
async def admin(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client authenticated with the admin token."""
    async with client_for(app, ADMIN_TOKEN) as client:
        yield client


@pytest.fixture
async def anonymous(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client without a token."""
    async with client_for(app, None) as client:
        yield client


class Users:
    """Creates API keys on demand and hands out clients that use them."""

    def __init__(self, app: FastAPI, admin: httpx.AsyncClient) -> None:
        self.app, self.admin = app, admin
        self._clients: list[httpx.AsyncClient] = []

    async def key(self, subject: str, role: str = "user") -> dict[str, str]:
        response = await self.admin.post("/v1/api-keys", json={"subject": subject, "role": role})
        assert response.status_code == 201, response.text
        body: dict[str, str] = response.json()
        return body

    async def client(self, subject: str, role: str = "user") -> httpx.AsyncClient:
        key = await self.key(subject, role)
        client = client_for(self.app, key["key"])
        self._clients.append(client)
        return client

    async def close(self) -> None:
        for client in self._clients:
            await client.aclose()


@pytest.fixture
async def users(app: FastAPI, admin: httpx.AsyncClient) -> AsyncIterator[Users]:
    """`await users.client("alice")` is a client acting as the user alice."""
    registry = Users(app, admin)
    yield registry
    await registry.close()


@pytest.fixture
def empty_database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database of `backend` with no tables at all, private to this test."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    name = create_postgres_database()
    try:
        yield postgres_url(name)
    finally:
        drop_postgres_database(name)


def lifespan_of(app: FastAPI) -> LifespanManager:
    """Runs `app`'s lifespan (`async with`), with time to spare on a busy machine."""
    return LifespanManager(app, startup_timeout=LIFESPAN_TIMEOUT_S,
                           shutdown_timeout=LIFESPAN_TIMEOUT_S)
