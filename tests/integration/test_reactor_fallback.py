"""
netd's public fallback paths keep working in a real process: key echo tests
of the suite (which runs netd on its fast paths) again with netd on Twisted's
default reactor (C{NETD_REACTOR=twisted}), and with each start-up canary of
L{netd.reactors} made to fail in the netd process (a C{sitecustomize} module
takes a private name away before netd starts), so that netd takes that
canary's fallback: the uvloop reactor's to the epoll one, the epoll
reactor's to Twisted's, the batching UDP port's to Twisted's, and C{TCP_INFO}'s
to netd's own activity clock.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import attrs
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


@attrs.frozen
class Fallback:
    """
    One public path: the C{NETD_REACTOR} asked for, the Python run before
    netd starts to make a canary fail (if any), the reactor netd then says
    it runs on, and the canary's name in its warning.
    """

    chosen: str
    breakage: str | None
    reactor: str
    canary: str | None


FALLBACKS = {
    "twisted": Fallback("twisted", None, "twisted", None),
    "uvloop-canary": Fallback("uvloop", "import sys\nsys.modules['uvloop'] = None\n", "netd", "uvloop reactor"),
    "epoll-canary": Fallback(
        "netd", "from twisted.internet import tcp\ndel tcp.Connector._makeTransport\n", "twisted", "epoll reactor"
    ),
    "tcp-info-canary": Fallback("uvloop", "import socket\ndel socket.TCP_INFO\n", "uvloop", "TCP_INFO idle reading"),
    "batching-udp-canary": Fallback(
        "uvloop",
        "import ctypes\n"
        "class _NoBatches(ctypes.CDLL):\n"
        "    def __getattr__(self, name):\n"
        "        if name in ('recvmmsg', 'sendmmsg'):\n"
        "            raise AttributeError(name)\n"
        "        return super().__getattr__(name)\n"
        "ctypes.CDLL = _NoBatches\n",
        "uvloop",
        "batching UDP port",
    ),
}


@pytest.fixture(autouse=True, params=sorted(FALLBACKS))
def fallback(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Fallback:
    """
    Every netd of this module runs on one public path in turn.
    """
    chosen: Fallback = FALLBACKS[request.param]
    monkeypatch.setenv("NETD_REACTOR", chosen.chosen)
    if chosen.breakage is not None:
        site = tmp_path / "breakage"
        site.mkdir()
        (site / "sitecustomize.py").write_text(chosen.breakage)
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    return chosen


def test_fallbackSaysSo(startNetd: Any, fallback: Fallback) -> None:
    """
    netd run says which reactor it runs on, warns once for the failed canary (none with NETD_REACTOR=twisted), and echoes over TCP and UDP.
    """
    netd = startNetd(echoService("echo", ["tcp:0:interface=127.0.0.1", "udp:0:interface=127.0.0.1"]))
    with socket.create_connection(netd.address("echo", "tcp"), timeout=10) as client:
        client.sendall(b"over tcp")
        assert client.recv(100) == b"over tcp"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(b"over udp", netd.address("echo", "udp"))
        assert client.recv(100) == b"over udp"
    log = netd.log()
    assert f"(reactor: {fallback.reactor})" in log
    warnings = [line for line in log.splitlines() if "a private API netd relies on is missing or changed" in line]
    if fallback.canary is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and fallback.canary in warnings[0], warnings
