"""The committed OpenAPI document is what the app serves, and it follows the conventions."""

import json
import re
from pathlib import Path

from app.main import create_app
from tests.conftest import make_settings

COMMITTED = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"
OPERATION_ID = re.compile(r"^[a-z]+-[a-z_]+$")


def served_document() -> dict:
    return create_app(make_settings("sqlite+aiosqlite:///unused.db")).openapi()


class TestCommittedDocument:
    def test_served_document_equals_committed_file(self):
        committed = json.loads(COMMITTED.read_text())
        assert served_document() == committed, (
            "openapi/openapi.json is stale: run `loomd openapi > openapi/openapi.json`"
        )

    def test_document_does_not_depend_on_settings(self):
        other = create_app(
            make_settings("postgresql+asyncpg://x@127.0.0.1/y", admin_token=None,
                          cors_origins=["https://ui.example"], max_body_bytes=4096)
        ).openapi()
        assert other == served_document()


class TestConventions:
    def test_every_operation_has_tag_name_operation_id_and_summary(self):
        ids = []
        for path, methods in served_document()["paths"].items():
            for method, operation in methods.items():
                assert OPERATION_ID.match(operation["operationId"]), (method, path)
                assert operation["operationId"].split("-")[0] == operation["tags"][0]
                assert operation.get("summary"), (method, path)
                ids.append(operation["operationId"])
        assert len(ids) == len(set(ids))

    def test_every_error_response_is_problem_json(self):
        for path, methods in served_document()["paths"].items():
            for method, operation in methods.items():
                for status, response in operation["responses"].items():
                    if int(status) >= 400:
                        assert list(response["content"]) == ["application/problem+json"], (
                            method, path, status)

    def test_v1_operations_require_bearer_and_health_does_not(self):
        document = served_document()
        assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        for path, methods in document["paths"].items():
            for operation in methods.values():
                expected = [{"bearer": []}] if path.startswith("/v1/") else None
                assert operation.get("security") == expected, path

    def test_validation_errors_point_at_the_problem_schema_with_errors(self):
        schemas = served_document()["components"]["schemas"]
        assert "errors" in schemas["ValidationProblem"]["properties"]
        assert {"type", "title", "status", "detail", "code"} <= set(
            schemas["Problem"]["required"])
