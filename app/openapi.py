"""The OpenAPI document: problem+json errors, bearer auth, stable operation ids."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic.json_schema import models_json_schema

from app import __version__
from app.api import webhooks
from app.api.runs import SERVER_SENT_EVENT
from app.errors import PROBLEM_JSON
from app.schemas.agents import PROVIDER_OPTIONS
from app.schemas.tools import ScriptedOptions

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


COMPONENTS = "#/components/schemas/"
FRAMEWORK_VALIDATION_REF = f"{COMPONENTS}HTTPValidationError"


def _problem_responses(document: dict[str, Any]) -> None:
    validation_ref = {"$ref": f"{COMPONENTS}ValidationProblem"}
    for path, methods in document.get("paths", {}).items():
        for operation in methods.values():
            if path.startswith("/v1/"):
                operation["security"] = [{"bearer": []}]
            for status, response in operation.get("responses", {}).items():
                if not status.isdigit() or int(status) < 400:
                    continue
                content = response.get("content", {})
                schema = content.pop("application/json", {}).get("schema")
                if status == "422" and (schema or {}).get("$ref") in (
                        None, FRAMEWORK_VALIDATION_REF):
                    schema = validation_ref
                    response["description"] = (
                        "Invalid payload or parameters (`validation_error`, with `errors`)")
                content[PROBLEM_JSON] = {"schema": schema or validation_ref}
                response["content"] = content


def _optional_bodies(document: dict[str, Any]) -> None:
    """An optional body is its schema, not `anyOf: [schema, null]`: a client sends none
    rather than `null`, and generators then make the argument optional."""
    for methods in document.get("paths", {}).values():
        for operation in methods.values():
            body = operation.get("requestBody")
            if body is None or body.get("required"):
                continue
            for media in body.get("content", {}).values():
                members = media.get("schema", {}).get("anyOf", [])
                others = [m for m in members if m != {"type": "null"}]
                if len(members) == 2 and len(others) == 1:
                    media["schema"] = others[0]


def _optional_parameters(document: dict[str, Any]) -> None:
    """An optional query or header parameter is its schema, not `anyOf: [schema, null]`: it
    is absent or a value, never `null`, and generators then name its type after the
    parameter instead of `…Type0`."""
    for methods in document.get("paths", {}).values():
        for operation in methods.values():
            for parameter in operation.get("parameters", []):
                schema = parameter.get("schema", {})
                members = schema.get("anyOf", [])
                others = [m for m in members if m != {"type": "null"}]
                if parameter.get("required") or len(members) != 2 or len(others) != 1:
                    continue
                rest = {k: v for k, v in schema.items()
                        if k != "anyOf" and not (k == "default" and v is None)}
                parameter["schema"] = {**others[0], **rest}


def _refer_to_provider_options(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_refer_to_provider_options(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if all(schema.get(key) == value for key, value in PROVIDER_OPTIONS.items()):
        rest = {k: v for k, v in schema.items() if k not in PROVIDER_OPTIONS}
        return {"$ref": f"{COMPONENTS}{PROVIDER_OPTIONS['title']}", **rest}
    return {key: _refer_to_provider_options(value) for key, value in schema.items()}


def _provider_options(schemas: dict[str, Any]) -> None:
    """`provider_options` is free-form, each provider reading its own; the document types
    the `scripted` provider's (`script` of `ScriptStep`s) and leaves the rest open."""
    schemas.update(_refer_to_provider_options(schemas))
    _, definitions = models_json_schema(
        [(ScriptedOptions, "validation")], ref_template=COMPONENTS + "{model}")
    scripted = definitions["$defs"].pop(ScriptedOptions.__name__)
    schemas.update(definitions["$defs"])
    schemas[PROVIDER_OPTIONS["title"]] = {
        "type": "object", "title": "ProviderOptions", "additionalProperties": True,
        "description": "Options of the agent's provider. The `scripted` provider reads "
                       "these members; other providers take their own.",
        "properties": scripted["properties"],
    }


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
            {"name": "runtime",
             "description": "Pause and resume the runtime: runs park at turn boundaries "
                            "(admin)."},
            {"name": "snapshots",
             "description": "Portable envelopes of the service's state: export, import, "
                            "restore (admin)."},
        ],
        separate_input_output_schemas=False, webhooks=webhooks.router.routes,
    )
    _problem_responses(document)
    _optional_bodies(document)
    _optional_parameters(document)
    for webhook in document.get("webhooks", {}).values():
        for operation in webhook.values():  # loomd sends these: it validates no answer
            operation["responses"].pop("422", None)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    _provider_options(schemas)
    schemas[SERVER_SENT_EVENT["title"]] = SERVER_SENT_EVENT
    document["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "the admin token (`LOOMD_ADMIN_TOKEN`) or an API key (`lmd_…`)"}
    }
    app.openapi_schema = document
    return document
