"""Property-based fuzzing of every documented operation from /openapi.json (schemathesis).

No operation may answer 5xx, and every response must match its documented status, content
type and schema, whatever the generated input. (Driven through hypothesis directly: the
schemathesis pytest plugin does not load on this pytest.)
"""

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
OPERATIONS = sorted(
    f"{method.upper()} {path}"
    for path, ops in create_app().openapi()["paths"].items()
    for method in ops
)


@pytest.mark.parametrize("label", OPERATIONS)
def test_every_operation_conforms(client: TestClient, label: str) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    operation = schema[label.split(" ", 1)[1]][label.split(" ", 1)[0]]

    @given(case=operation.as_strategy())
    @hypothesis_settings(
        max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    def fuzz(case) -> None:  # type: ignore[no-untyped-def]
        case.call_and_validate(checks=CHECKS)

    fuzz()
