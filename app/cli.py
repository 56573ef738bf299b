"""The `loomd` command: serve, migrate, openapi, run, and listing agents, sessions, runs."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from app import __version__
from app.config import Settings

DEFAULT_SERVER = "http://127.0.0.1:8080"

logger = logging.getLogger("loomd")

EPILOG = """\
examples:
  loomd serve                          start on http://127.0.0.1:8080 with ./loomd.db
  loomd serve --port 9000 --database-url postgresql+asyncpg://postgres@127.0.0.1/loomd
  loomd migrate                        bring the database schema up to date, then exit
  loomd openapi > openapi.json         print the OpenAPI document
  loomd run support "Where is my order?"   chat with an agent from the terminal
  loomd runs --status running          list runs (also: loomd agents, loomd sessions; --json)

Every setting can also come from a LOOMD_* environment variable or a .env file
(LOOMD_DATABASE_URL, LOOMD_ADMIN_TOKEN, LOOMD_PORT, ...); flags win over both.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loomd", description="loomd: a self-hosted runtime for LLM agent loops.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"loomd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    serve = commands.add_parser(
        "serve", help="run the HTTP service (applies migrations first)",
        description="Apply pending migrations (unless LOOMD_AUTO_MIGRATE=false), then serve "
        "HTTP. Without LOOMD_ADMIN_TOKEN the service runs in open mode, which is only "
        "allowed on a loopback address.",
    )
    serve.add_argument("--host", help="address to bind (default 127.0.0.1, or LOOMD_HOST)")
    serve.add_argument("--port", type=int, help="port to bind (default 8080, or LOOMD_PORT)")
    serve.add_argument("--database-url", help="SQLAlchemy URL (default sqlite+aiosqlite:///./loomd.db)")

    migrate = commands.add_parser(
        "migrate", help="apply database migrations and exit",
        description="Bring the database schema to the version this loomd needs.",
    )
    migrate.add_argument("--database-url", help="SQLAlchemy URL (default: LOOMD_DATABASE_URL)")

    commands.add_parser(
        "openapi", help="print the OpenAPI document as JSON",
        description="Print the OpenAPI document (the same as GET /openapi.json).",
    )

    run = commands.add_parser(
        "run", help="run an agent on a loomd server and stream the answer here",
        description="Start a run and render its events: text as it streams, tool calls and "
        "results, the final status. Exits 0 when the run completed.",
    )
    run.add_argument("agent", help="the agent's name")
    run.add_argument("prompt", help="the user message")
    run.add_argument("--session", help="continue this session (default: a new one)")
    run.add_argument("--server", help=f"server URL (default LOOMD_URL or {DEFAULT_SERVER})")
    run.add_argument("--token", help="bearer token (default LOOMD_TOKEN or LOOMD_ADMIN_TOKEN)")

    for kind, what, filters in (("agents", "agents", ()), ("sessions", "sessions", ("agent",)),
                                ("runs", "runs", ("agent", "status"))):
        listing = commands.add_parser(
            kind, help=f"list the {what} on a loomd server, newest first",
            description=f"List the {what} the token may see (an admin sees every owner's) "
            "as a table, or as the API's JSON page with --json.",
        )
        for name in filters:
            listing.add_argument(f"--{name}", help=f"only {what} with this {name}")
        listing.add_argument("--limit", type=int, default=50,
                             help="how many, at most 200 (default 50)")
        listing.add_argument("--json", action="store_true", help="print the JSON page as is")
        listing.add_argument("--server", help=f"server URL (default LOOMD_URL or {DEFAULT_SERVER})")
        listing.add_argument("--token",
                             help="bearer token (default LOOMD_TOKEN or LOOMD_ADMIN_TOKEN)")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        key: value for key in ("host", "port", "database_url")
        if (value := getattr(args, key, None)) is not None
    }
    return Settings(**overrides)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _migrate(settings: Settings) -> None:
    from app.store.migrate import upgrade

    upgrade(settings.database_url)
    logger.info("database schema is current", extra={"database": _redacted(settings)})


def _redacted(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.database_url).render_as_string(hide_password=True)


def _check_schema(settings: Settings) -> None:
    from app.store.db import create_engine
    from app.store.migrate import ensure_current

    async def check() -> None:
        engine = create_engine(settings)
        try:
            await ensure_current(engine)
        finally:
            await engine.dispose()

    asyncio.run(check())


def _serve(settings: Settings) -> int:
    from app.store.lock import DatabaseInUse, lock_database

    if settings.open_mode and not _is_loopback(settings.host):
        logger.error(
            "refusing to start: open mode (no LOOMD_ADMIN_TOKEN) is only allowed on a loopback "
            "address, not %s; set LOOMD_ADMIN_TOKEN or bind 127.0.0.1", settings.host,
        )
        return 2
    # Before the app's imports and migrations: a second process on a SQLite file is refused at once.
    try:
        lock = lock_database(settings.database_url)
    except DatabaseInUse as exc:
        logger.error("refusing to start: %s", exc,
                     extra={"database": str(exc.database), "lock": str(exc.lock)})
        return 3
    except OSError as exc:
        logger.error("cannot lock the database %s: %s", _redacted(settings), exc)
        return 3
    with lock:
        from app.main import create_app
        from app.serve import serve_http
        from app.store.migrate import SchemaOutdated

        try:
            if settings.auto_migrate:
                _migrate(settings)
            else:
                _check_schema(settings)
        except SchemaOutdated as exc:
            logger.error("refusing to start: %s", exc)
            return 3
        except Exception as exc:
            logger.error("cannot open the database %s: %s", _redacted(settings), exc)
            return 3
        logger.info("starting loomd", extra={
            "version": __version__, "host": settings.host, "port": settings.port,
            "database": _redacted(settings)})
        serve_http(create_app(settings), host=settings.host, port=settings.port)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `loomd` console script."""
    args = _parser().parse_args(argv)
    if args.command == "run":
        from app.console import run_in_terminal

        return run_in_terminal(args.agent, args.prompt, args.session, args.server, args.token)
    if args.command in ("agents", "sessions", "runs"):
        from app.listing import list_in_terminal

        filters = {name: getattr(args, name, None) for name in ("agent", "status")}
        return list_in_terminal(args.command, args.server, args.token, as_json=args.json,
                                limit=args.limit, filters=filters)
    from app.logs import configure_logging

    try:
        settings = _settings(args)
    except ValidationError as exc:
        print(f"loomd: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if args.command == "openapi":
        from app.main import create_app

        print(json.dumps(create_app(settings).openapi(), indent=2, ensure_ascii=False))
        return 0
    if args.command == "migrate":
        try:
            _migrate(settings)
        except Exception as exc:
            logger.error("migration failed for %s: %s", _redacted(settings), exc)
            return 1
        return 0
    return _serve(settings)


if __name__ == "__main__":
    sys.exit(main())
