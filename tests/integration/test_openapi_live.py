"""
The control API against its own OpenAPI description: schemathesis generates
requests from the C{GET /openapi.json} a real netd serves (on loopback, with
the token of its ports file) and checks every answer: no 5xx, and each status,
content type and body as the description says.  The examples per operation
are few, so the whole run stays well under a minute.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from netd.daemon.openapi import openapiDocument, renderOpenAPI
from netd.testing.harness import NetdServer

from .conftest import IO_TIMEOUT

pytestmark = pytest.mark.integration

CONFIG = """\
[[services]]
name = "echo"
plugin = "echo"
listen = ["tcp:0:interface=127.0.0.1", "udp:0:interface=127.0.0.1"]
framing = "line"

[[services]]
name = "dns"
plugin = "dns-proxy"
listen = ["udp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"]
upstreams = ["udp:127.0.0.1:9"]
health_check = 3600
"""
EXAMPLES = 6
"""
Requests schemathesis makes per operation.
"""
BUDGET = 60.0
"""
Seconds the whole run may take.
"""
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def liveNetd(startModuleNetd: Callable[..., NetdServer]) -> NetdServer:
    """
    A netd with an echo and a DNS proxy service and its control API on a loopback port.
    """
    return startModuleNetd(CONFIG)


@pytest.fixture(scope="module")
def servedDescription(liveNetd: NetdServer) -> dict[str, Any]:
    """
    The description the live netd serves at /openapi.json (asked without the token).
    """
    with urllib.request.urlopen(liveNetd.adminURL("/openapi.json"), timeout=IO_TIMEOUT) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        text = response.read().decode("utf-8")
    assert text == renderOpenAPI()
    document: dict[str, Any] = json.loads(text)
    return document


@pytest.fixture(scope="module")
def liveSchema(servedDescription: dict[str, Any], liveNetd: NetdServer) -> Any:
    """
    The served description for schemathesis, its service and table names
    drawn from the live services as well as at random, so that the answers
    of real services and tables are checked too (but for C{DELETE
    /services/NAME}, which would remove them: its names are random).
    """
    document = json.loads(json.dumps(servedDescription))
    for item in document["paths"].values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "name" and operation["operationId"] != "deleteService":
                    parameter["schema"] = {"anyOf": [{"enum": sorted(liveNetd.services)}, {"type": "string"}]}
                elif parameter["name"] == "table":
                    parameter["schema"] = {"anyOf": [{"enum": ["records", "scripts"]}, {"type": "string"}]}
    schema = schemathesis.openapi.from_dict(document)
    schema.config.base_url = liveNetd.adminURL("").rstrip("/")
    return schema


@pytest.fixture(scope="module")
def started() -> float:
    """
    When the run began, for the time budget.
    """
    return time.monotonic()


OPERATIONS = [
    (path, method.upper())
    for path, item in openapiDocument()["paths"].items()
    for method in item
    if method in ("get", "put", "post", "delete")
]


@pytest.mark.parametrize("path, method", OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_answersMatchTheDescription(
    path: str, method: str, liveSchema: Any, liveNetd: NetdServer, started: float
) -> None:
    """
    Every request generated from the description of an operation gets an answer that is not a 5xx and
    matches the description (status, content type, body).
    """
    operation = liveSchema[path][method]
    baseURL = liveNetd.adminURL("").rstrip("/")
    headers = liveNetd.adminHeaders()

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
    )
    def answers(case: Any) -> None:
        assert time.monotonic() - started < BUDGET, f"the schemathesis run took more than {BUDGET} seconds"
        case.call_and_validate(base_url=baseURL, headers=headers, checks=CHECKS, timeout=IO_TIMEOUT)

    answers()


def test_netdStillServes(liveNetd: NetdServer) -> None:
    """
    After the generated requests, netd is alive and its services listen.
    """
    status, body = liveNetd.api("GET", "/services")
    assert status == 200
    assert set(body["services"]) == {"echo", "dns"}
    assert all(s["listening"] for s in body["services"].values())
