"""The web console at `/console/`: static files over the public API, no token to load them."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

CONSOLE_PATH = "/console"
CONSOLE_DIR = Path(__file__).resolve().parent.parent / "static" / "console"


def install_console(app: FastAPI) -> None:
    """Serve the console's files; `/` and `/console` lead to it. Not in the OpenAPI document."""

    async def to_console(request: Request) -> RedirectResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return RedirectResponse(f"{root}{CONSOLE_PATH}/", status_code=307)

    for path in ("/", CONSOLE_PATH):
        app.add_api_route(path, to_console, methods=["GET"], include_in_schema=False)
    app.mount(CONSOLE_PATH, StaticFiles(directory=CONSOLE_DIR, html=True), name="console")
