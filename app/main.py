"""The application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from app import __version__
from app.api import (
    agents,
    health,
    hooks,
    keys,
    metrics,
    providers,
    runs,
    runtime,
    sessions,
    snapshots,
    tool_secrets,
)
from app.api.docs import install_docs
from app.api.web_console import install_console
from app.config import Settings
from app.errors import install_error_handlers
from app.events.bus import EventBus
from app.metrics import Metrics
from app.middleware import ProblemCORSMiddleware, RequestContextMiddleware
from app.openapi import DESCRIPTION, build_openapi, operation_id
from app.providers.registry import ProviderRegistry
from app.runs.manager import RunManager
from app.schemas.common import Problem
from app.store.db import Database
from app.store.lock import lock_database
from app.store.migrate import ensure_current

logger = logging.getLogger("loomd")

CORS_ALLOWED_HEADERS = [
    "Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key", "X-Request-ID",
]
CORS_EXPOSED_HEADERS = [
    "Location", "Content-Location", "Retry-After", "X-Request-ID", "Idempotency-Replayed",
]


def _lifespan(settings: Settings) -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        lock = lock_database(settings.database_url)
        database = Database.open(settings)
        try:
            await ensure_current(database.engine)
        except BaseException:
            await database.close()
            lock.release()
            raise
        app.state.db = database
        registry = ProviderRegistry(settings)
        app.state.providers = registry
        manager = RunManager(settings, database, EventBus(), registry, app.state.metrics)
        app.state.manager = manager
        app.state.metrics.bind(lambda: {
            "loomd_runs_active": manager.active_count,
            "loomd_runs_queued": manager.queued_count,
            "loomd_sse_clients": manager.bus.subscriber_count(),
            "loomd_events_persisted": manager.writer.persisted,
        })
        await manager.start()
        if settings.open_mode:
            logger.warning(
                "open mode: LOOMD_ADMIN_TOKEN is not set, so requests without a token act as "
                "the admin; set it before exposing the service"
            )
        try:
            yield
        finally:
            manager.bus.close()  # open event streams end as complete responses
            await manager.shutdown()
            await registry.aclose()
            await database.close()
            lock.release()

    return lifespan


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the loomd app; the lifespan opens the database and checks its schema."""
    settings = settings or Settings()
    app = FastAPI(
        title="loomd", version=__version__, description=DESCRIPTION,
        lifespan=_lifespan(settings), generate_unique_id_function=operation_id,
        redirect_slashes=False, docs_url=None, redoc_url=None,
        separate_input_output_schemas=False,
        responses={500: {"description": "A bug (`internal_error`); never a stack trace",
                         "model": Problem}},
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    install_error_handlers(app)
    for router in (health.router, metrics.router, keys.router, agents.router, sessions.router,
                   runs.router, providers.router, tool_secrets.router, hooks.router,
                   runtime.router, snapshots.router):
        app.include_router(router)
    install_docs(app)
    install_console(app)
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes,
                       uncapped_paths=(snapshots.IMPORT_PATH,))
    if settings.cors_origins:
        app.add_middleware(
            ProblemCORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
            allow_headers=CORS_ALLOWED_HEADERS, expose_headers=CORS_EXPOSED_HEADERS,
            allow_credentials=False, max_age=600,
        )
    return app
