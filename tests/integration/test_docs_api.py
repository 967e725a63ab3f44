"""
The GET calls the docs show run against a live netd: each C{curl} line of the
docs that reads from the control API at its documented place
(C{http://127.0.0.1:8053}) is sent, with its path and query, to a netd whose
services are named as in the docs (echo, dns, tls-echo), and answers 200.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from netd.testing.harness import NetdServer

from ..unit.test_docs_examples import API_ORIGIN, CURLS, methodAndPath
from .conftest import IO_TIMEOUT

pytestmark = pytest.mark.integration

CONFIG = """\
[[services]]
name = "echo"
plugin = "echo"
listen = ["tcp:0:interface=127.0.0.1", "udp:0:interface=127.0.0.1"]

[[services]]
name = "dns"
plugin = "dns-proxy"
listen = ["udp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"]
upstreams = ["udp:127.0.0.1:9"]
health_check = 3600

[[services]]
name = "tls-echo"
plugin = "tls-echo"
listen = ["tcp:0:interface=127.0.0.1"]
tls = { certificate = "auto" }
"""


def documentedGets() -> list[tuple[str, str]]:
    """
    The GET curl lines of the docs to the control API's documented address, as (where, path with query).
    """
    found = []
    for where, command in CURLS:
        method, _ = methodAndPath(command)
        url = next((word.strip("'\"") for word in command.split() if word.strip("'\"").startswith(API_ORIGIN)), None)
        if method == "GET" and url is not None:
            parts = urlsplit(url)
            found.append((where, parts.path + (f"?{parts.query}" if parts.query else "")))
    return found


GETS = documentedGets()


def test_docsHaveGets() -> None:
    """
    The docs have GET calls to the control API, so the live check cannot pass on nothing.
    """
    assert len(GETS) >= 5


@pytest.fixture(scope="module")
def liveNetd(startModuleNetd: Callable[..., NetdServer]) -> NetdServer:
    """
    A netd with the services the docs' calls name and its control API on a loopback port.
    """
    return startModuleNetd(CONFIG)


@pytest.mark.parametrize(("where", "path"), GETS, ids=[where for where, _ in GETS])
def test_documentedGetAnswers(where: str, path: str, liveNetd: NetdServer) -> None:
    """
    Each GET call the docs show answers 200 from a live netd.
    """
    with urllib.request.urlopen(liveNetd.adminURL(path), timeout=IO_TIMEOUT) as response:
        assert response.status == 200
