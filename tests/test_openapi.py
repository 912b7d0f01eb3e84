"""GET /openapi.json (issue 18): a valid OpenAPI 3.1 document (openapi-spec-validator) naming every
route the app serves, and schemathesis against a live `phi4mm serve` on the tiny checkpoint,
bounded in examples: every answer conforms to the document (status code, content type, body
schema) and none is a 5xx."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import schemathesis
from fuzzing import bounded
from hypothesis import given
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route
from test_server import _env, _start, _stop

from phi4mm.server.app import create_app
from phi4mm.server.openapi import openapi_document
from phi4mm.server.settings import ServerSettings

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.parametrize("settings", [ServerSettings(), ServerSettings(api_key="k", ui=False)],
                         ids=["open-with-ui", "key-without-ui"])
def test_the_document_is_valid_openapi_and_names_every_route(settings):
    document = openapi_document(settings)
    validate(document)
    assert document["openapi"] == "3.1.0"
    served = {(route.path, method.lower()) for route in create_app(settings).routes if isinstance(route, Route)
              for method in route.methods if method != "HEAD"}
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert served == documented
    assert ("security" in document) == (settings.api_key is not None)


def test_extensions_are_marked():
    document = openapi_document(ServerSettings())
    request = document["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    for name in ("top_k", "min_p", "repeat_penalty", "dynamic_hd"):
        assert request[name]["anyOf"][0]["x-phi4mm-extension"] is True, name
    assert "x-phi4mm-extension" not in request["temperature"]["anyOf"][0]
    assert document["paths"]["/health"]["get"]["x-phi4mm-extension"] is True


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_q4: Path):
    server = _start(tmp_path_factory.mktemp("openapi"), tiny_q4, ["--media-workers", "1", "--parallel", "2"],
                    _env(), "")
    yield server
    _stop(server)


SCHEMA = schemathesis.openapi.from_dict(openapi_document(ServerSettings()))  # what `live` serves
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


def test_the_live_server_serves_the_document(live):
    assert httpx.get(f"{live.base}/openapi.json", timeout=10).json() == SCHEMA.raw_schema


@pytest.mark.slow
@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
def test_the_live_server_conforms_to_its_document(live, operation):
    @bounded(25)
    @given(case=operation.as_strategy())
    def conforms(case):
        case.call_and_validate(base_url=live.base, checks=CHECKS, timeout=60)

    conforms()
