"""
The fallback to Twisted's own reactor (C{NETD_REACTOR=twisted}) keeps
working: key echo tests of the suite, which runs netd on netd's reactor,
again with netd on Twisted's default reactor.
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import echoService
from .test_echo_service import (  # noqa: F401
    framedEchoes,
    test_framingGoldenBytes,
    test_halfClose,
    test_idleTimeout,
    test_overLimitFrame,
)
from .test_flow_control import test_rawEchoIsBounded  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _twistedReactor(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Every netd of this module runs with C{NETD_REACTOR=twisted}.
    """
    monkeypatch.setenv("NETD_REACTOR", "twisted")


def test_fallbackSaysSo(startNetd: Any) -> None:
    """
    With NETD_REACTOR=twisted, netd run says it runs on Twisted's reactor.
    """
    netd = startNetd(echoService("echo", ["tcp:0:interface=127.0.0.1"]))
    assert "(reactor: twisted)" in netd.log()
