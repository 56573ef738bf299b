"""`/healthz` and `/readyz`: no token needed."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from pydantic import BaseModel

from app import __version__
from app.api.responses import errors
from app.errors import Unavailable
from app.store.migrate import SchemaOutdated, ensure_current

router = APIRouter(tags=["health"])
logger = logging.getLogger("loomd.health")


class Health(BaseModel):
    status: str
    version: str


class Readiness(BaseModel):
    status: str
    database: str


@router.get("/healthz", name="live", summary="Liveness")
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok", version=__version__)


@router.get(
    "/readyz", name="ready", summary="Readiness",
    responses=errors(503, s503="The database is unreachable (`database: unreachable`) or its "
                     "schema is not current (`database: outdated`): `unavailable`"),
)
async def readyz(request: Request) -> Readiness:
    """The database answers and its schema is at this version's migration head."""
    try:
        await ensure_current(request.app.state.db.engine)
    except SchemaOutdated as exc:
        raise Unavailable(str(exc), database="outdated") from exc
    except Exception as exc:
        logger.warning("readiness check failed", extra={"error": repr(exc)})
        raise Unavailable("the database did not answer", database="unreachable") from exc
    return Readiness(status="ok", database="ok")
