"""
A real netd on Twisted's public TLS path: its record pump's start-up check is
made to fail (the check's internal switch, C{NETD_TLS_PUMP_CANARY=fail}), and
netd warns once, then serves TLS to Python's ssl module as on the pump:
echo, session resumption and the failure taxonomy counted in /metrics.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from netd.testing.harness import NetdServer
from netd.tls import pump
from netd.tls.devcerts import ensureDevelopmentSet

from .conftest import IO_TIMEOUT, recvExactly

pytestmark = pytest.mark.integration

CONFIG = """
[[services]]
name = "tls"
plugin = "tls-echo"
listen = ["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"]
framing = "line"
tls = {{ certificate = "{certificate}", private_key = "{key}" }}
"""


def handshakes(netd: NetdServer, result: str) -> float:
    """
    The service's C{netd_tls_handshakes_total{result=RESULT}} in /metrics (0 when absent).
    """
    for line in netd.admin.metrics().splitlines():
        if line.startswith("netd_tls_handshakes_total{") and 'service="tls"' in line and f'result="{result}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def waitForHandshakes(netd: NetdServer, result: str, value: float) -> None:
    """
    Poll /metrics until the service has counted C{value} handshakes of C{result}.
    """
    deadline = time.monotonic() + IO_TIMEOUT
    while handshakes(netd, result) < value:
        assert time.monotonic() < deadline, f"handshakes {result} stayed below {value}"
        time.sleep(0.05)


def echoOnce(
    context: ssl.SSLContext, address: tuple[str, int], session: ssl.SSLSession | None = None
) -> ssl.SSLSession | None:
    """
    One TLS connection that echoes a line; its session, to resume.
    """
    with socket.create_connection(address, timeout=IO_TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname="localhost", session=session) as client:
            client.sendall(b"ping\n")
            assert recvExactly(client, 5) == b"ping\n"
            assert client.session_reused is (session is not None)
            return client.session


def test_fallbackServesWithOneWarning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, startNetd: Any) -> None:
    """
    netd whose record pump fails its start-up check logs one warning for its two TLS listeners, then echoes, resumes a session and counts not_tls, as on the pump.
    """
    dev, _ = ensureDevelopmentSet(str(tmp_path / "certs"))
    monkeypatch.setenv(pump.CANARY_SWITCH, "fail")
    netd: NetdServer = startNetd(CONFIG.format(certificate=dev.server, key=dev.serverKey))
    address = netd.address("tls")
    context = ssl.create_default_context(cafile=dev.ca)
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # a session to resume exists once the handshake is done
    session = echoOnce(context, address)
    echoOnce(context, address, session)
    with socket.create_connection(address, timeout=IO_TIMEOUT) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        raw.recv(1024)
    waitForHandshakes(netd, "not_tls", 1)
    assert handshakes(netd, "ok") == 2
    assert netd.counter("tls_sessions_resumed", "tls") == 1
    log = netd.log()
    assert log.count("TLS record pump: a private API netd relies on is missing or changed") == 1, log
    assert "_netdCanaryForcedMissing" in log
