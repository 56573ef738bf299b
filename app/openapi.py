"""The OpenAPI document: problem+json errors, bearer auth, stable operation ids."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from app import __version__
from app.api import webhooks
from app.errors import PROBLEM_JSON

DESCRIPTION = (
    "loomd runs LLM agent loops for other programs: define an agent, open a session, start "
    "runs, and follow every step as Server-Sent Events. Every error is "
    "`application/problem+json` with a stable `code`. Authenticate with "
    "`Authorization: Bearer <token>` (the admin token or an API key)."
)


def operation_id(route: APIRoute) -> str:
    """`{tag}-{name}`, so generated SDK methods read well."""
    tag = route.tags[0] if route.tags else "default"
    return f"{tag}-{route.name}"


def _problem_responses(document: dict[str, Any]) -> None:
    validation_ref = {"$ref": "#/components/schemas/ValidationProblem"}
    for path, methods in document.get("paths", {}).items():
        for operation in methods.values():
            if path.startswith("/v1/"):
                operation["security"] = [{"bearer": []}]
            for status, response in operation.get("responses", {}).items():
                if not status.isdigit() or int(status) < 400:
                    continue
                content = response.get("content", {})
                schema = content.pop("application/json", {}).get("schema")
                if status == "422":
                    schema = validation_ref
                    response["description"] = (
                        "Invalid payload or parameters (`validation_error`, with `errors`)")
                content[PROBLEM_JSON] = {"schema": schema or validation_ref}
                response["content"] = content


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """Build (once) the document served at `/openapi.json` and committed in `openapi/`."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(
        title="loomd", version=__version__, description=DESCRIPTION, routes=app.routes,
        tags=[
            {"name": "health", "description": "Liveness and readiness (no token)."},
            {"name": "auth", "description": "API keys (admin) and the caller's identity."},
            {"name": "agents", "description": "Named, versioned agent configurations."},
            {"name": "sessions", "description": "Conversations and their messages."},
            {"name": "runs", "description": "Executions of the agent loop and their events."},
            {"name": "providers", "description": "Configured LLM providers and their health."},
            {"name": "tools", "description": "The key `http` tool calls are signed with."},
            {"name": "hooks",
             "description": "Webhooks that gate tool calls or receive run events."},
        ],
        separate_input_output_schemas=False, webhooks=webhooks.router.routes,
    )
    _problem_responses(document)
    for webhook in document.get("webhooks", {}).values():
        for operation in webhook.values():  # loomd sends these: it validates no answer
            operation["responses"].pop("422", None)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    document["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "the admin token (`LOOMD_ADMIN_TOKEN`) or an API key (`lmd_…`)"}
    }
    app.openapi_schema = document
    return document
