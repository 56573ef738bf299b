"""Serving the app over HTTP with uvicorn, and ending its event streams cleanly on a signal."""

from __future__ import annotations

import asyncio
from types import FrameType

import uvicorn
from fastapi import FastAPI
from sse_starlette.sse import AppStatus

GRACEFUL_SHUTDOWN_S = 10


class StreamEndingServer(uvicorn.Server):
    """uvicorn, ending the app's open event streams as soon as a signal asks it to stop.

    uvicorn waits for open responses to finish before it runs the lifespan's shutdown, so a
    stream left open would be torn down mid-response at the graceful-shutdown timeout.
    Ending each one as a complete response lets its client resume with `Last-Event-ID`.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        manager = getattr(self._app.state, "manager", None)
        if manager is None:  # not started yet: no stream is open
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_soon_threadsafe(manager.bus.close)


def serve_http(app: FastAPI, host: str, port: int) -> None:
    """Serve `app` until SIGINT or SIGTERM."""
    # sse-starlette's own drain would cancel the streams mid-response; they end above.
    AppStatus.disable_automatic_graceful_drain()
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, lifespan="on",
        proxy_headers=False, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    StreamEndingServer(config, app).run()
