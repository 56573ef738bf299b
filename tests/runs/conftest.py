"""Fixtures of the runs tests: fast retries, and a user with a helper API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from tests.conftest import Users, lifespan_of, make_settings
from tests.runs.helpers import Api

MAX_ATTEMPTS = 3


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Retries after about 10 ms, at most three attempts per LLM call."""
    return make_settings(database_url, llm_retry_base_s=0.01, llm_max_attempts=MAX_ATTEMPTS)


@pytest.fixture
async def alice(users: Users) -> Api:
    """The user alice, through the public API."""
    return Api(await users.client("alice"))


@pytest.fixture
async def bob(users: Users) -> Api:
    return Api(await users.client("bob"))


@asynccontextmanager
async def running_app(database_url: str, **settings: Any) -> AsyncIterator[FastAPI]:
    """An app of its own with the given settings, its lifespan running."""
    application = create_app(make_settings(database_url, llm_retry_base_s=0.01, **settings))
    async with lifespan_of(application):
        yield application
