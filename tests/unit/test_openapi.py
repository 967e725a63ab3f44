"""
The control API's OpenAPI description (L{netd.daemon.openapi}): a valid OpenAPI 3.1
document, the docs' copy of it, served at C{GET /openapi.json} without a
token, and naming every endpoint the API routes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from netd.daemon.api.resources import AdminResource
from netd.daemon.cli import main
from netd.daemon.openapi import openapiDocument, renderOpenAPI

from .test_admin import ECHO, TOKEN, bearer, request, started, withToken

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = ROOT / "docs" / "openapi.json"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def test_descriptionIsValidOpenAPI31() -> None:
    """
    openapi-spec-validator accepts the description as OpenAPI 3.1.
    """
    document = openapiDocument()
    assert document["openapi"].startswith("3.1.")
    validate(document)


def test_validatorRefusesABrokenDescription() -> None:
    """
    The validator used above does refuse a description with an operation that has a path parameter it does not declare.
    """
    document = json.loads(renderOpenAPI())
    document["paths"]["/services/{name}"]["get"].pop("parameters")
    with pytest.raises(OpenAPIValidationError):
        validate(document)


def test_publishedDescriptionIsWhatNetdServes(capsys: pytest.CaptureFixture[str]) -> None:
    """
    docs/openapi.json is byte for byte what `netd schema --api` prints and GET /openapi.json answers.
    """
    assert main(["schema", "--api"]) == 0
    printed = capsys.readouterr().out
    assert printed == PUBLISHED.read_text(encoding="utf-8"), (
        "docs/openapi.json is stale: regenerate it with `netd schema --api > docs/openapi.json`"
    )
    _, reactor = started(ECHO)
    response = request(reactor.site(), "GET", "/openapi.json")
    assert response.code == 200
    assert response.body.decode("utf-8") == printed
    assert response.json()["info"]["title"] == "netd control API"


def test_servedWithoutTokenButHostChecked(tmp_path: Path) -> None:
    """
    With admin_token_file, GET /openapi.json answers without the token (as the probes do), while a foreign Host gets 421.
    """
    _, reactor = withToken(tmp_path)
    site = reactor.site()
    assert request(site, "GET", "/services").code == 401
    assert request(site, "GET", "/openapi.json").code == 200
    assert request(site, "GET", "/openapi.json", headers=bearer(TOKEN)).code == 200
    refused = request(site, "GET", "/openapi.json", headers={"Host": "attacker.example"})
    assert refused.code == 421
    assert request(site, "POST", "/openapi.json", headers=bearer(TOKEN)).code == 405


def _described() -> set[tuple[str, str]]:
    """
    Every (METHOD, path) the description has, paths with NAME and TABLE for their parameters.
    """
    paths = openapiDocument()["paths"]
    return {
        (method.upper(), path.replace("{name}", "NAME").replace("{table}", "TABLE"))
        for path, item in paths.items()
        for method in item
        if method in METHODS
    }


def test_everyRouteIsDescribed() -> None:
    """
    Each endpoint the API routes (its index lists them) is described with its method, and nothing else is.
    """
    _, reactor = started(ECHO)
    resource = reactor.site().resource
    assert isinstance(resource, AdminResource)
    routed = {(method.decode(), path.decode()) for path, methods in resource.routes.items() for method in methods}
    routed |= {(pattern.partition(" ")[0], pattern.partition(" ")[2]) for pattern in resource.patterns}
    described = _described()
    tables = {("GET", "/services/NAME/TABLE"), ("PUT", "/services/NAME/TABLE"), ("DELETE", "/services/NAME/TABLE")}
    core = {(m, p.replace("TABLE", t)) for m, p in tables for t in ("events", "faults")} - {
        ("PUT", "/services/NAME/events")
    }
    assert described - core == routed
    assert core <= described


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    """
    Every operation of the description with its path and method.
    """
    return [
        (path, method, operation)
        for path, item in openapiDocument()["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


@pytest.mark.parametrize("path, method, operation", _operations(), ids=lambda v: v if isinstance(v, str) else "")
def test_refusalsAreDescribed(path: str, method: str, operation: dict[str, Any]) -> None:
    """
    Each operation describes the refusals the API's guard may answer it with: 421 always, 401 where a token
    can be needed, 403 on changes, and 411/413/415 where it takes a body.
    """
    codes = set(operation["responses"])
    assert {"421", "500", "503"} <= codes
    if path not in ("/health", "/ready", "/openapi.json"):
        assert "401" in codes
    if method in ("put", "post", "delete"):
        assert {"401", "403"} <= codes
        assert {"bearer": []} in operation["security"]
    if "requestBody" in operation:
        assert {"400", "411", "413", "415"} <= codes
