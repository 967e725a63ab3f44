"""
Datagram faults end to end: a real netd runs UDP echo services with faults from
its config file or set through the control API, and a Python UDP client checks
what it really receives: nothing, twice, late, cut, or out of order.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from netd.testing.harness import NetdServer

from .conftest import IO_TIMEOUT, echoService

pytestmark = pytest.mark.integration

SILENCE = 0.5
"""
Seconds a client waits to conclude that no (more) answer is coming.
"""

SERVICES = {
    "drop": '[{ type = "drop", first = 1 }]',
    "duplicate": '[{ type = "duplicate", direction = "to_client" }]',
    "delay": '[{ type = "delay", ms = 300, direction = "to_client" }]',
    "truncate": '[{ type = "truncate", bytes = 4 }]',
    "reorder": '[{ type = "reorder", first = 1, direction = "from_client", wait = 5000 }]',
    "api": "[]",
}
"""
One UDP echo service per fault, each used by one test (schedules count from the start).
"""


@pytest.fixture(scope="module")
def netd(startModuleNetd: Any) -> NetdServer:
    """
    One netd with the echo services of L{SERVICES}.
    """
    config = "".join(
        echoService(name, ["udp:0:interface=127.0.0.1"]) + f"faults = {faults}\n\n" for name, faults in SERVICES.items()
    )
    return startModuleNetd(config)  # type: ignore[no-any-return]


def client() -> socket.socket:
    """
    A UDP socket on loopback.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def answers(sock: socket.socket, wait: float = SILENCE, first: float = IO_TIMEOUT) -> list[bytes]:
    """
    Every datagram received until none comes for C{wait} seconds (C{first}
    seconds for the first one).
    """
    received = []
    sock.settimeout(first)
    while True:
        try:
            data, _ = sock.recvfrom(65536)
        except TimeoutError:
            return received
        received.append(data)
        sock.settimeout(wait)


def test_dropFirst(netd: NetdServer) -> None:
    """
    With C{drop} and C{first = 1} the first datagram gets no answer in time, the second one does.
    """
    address = netd.address("drop", "udp")
    with client() as sock:
        sock.sendto(b"first", address)
        assert answers(sock, first=SILENCE) == []
        sock.sendto(b"second", address)
        assert answers(sock) == [b"second"]


def test_duplicate(netd: NetdServer) -> None:
    """
    With C{duplicate} the client receives its answer twice, and no more.
    """
    with client() as sock:
        sock.sendto(b"twice", netd.address("duplicate", "udp"))
        assert answers(sock) == [b"twice", b"twice"]


def test_delay(netd: NetdServer) -> None:
    """
    With C{delay} of 300 ms, the round trip takes at least 300 ms.
    """
    with client() as sock:
        started = time.monotonic()
        sock.sendto(b"late", netd.address("delay", "udp"))
        sock.settimeout(IO_TIMEOUT)
        data, _ = sock.recvfrom(65536)
        elapsed = time.monotonic() - started
    assert data == b"late"
    assert elapsed >= 0.3


def test_truncate(netd: NetdServer) -> None:
    """
    With C{truncate} to 4 bytes, the answer is the first 4 bytes of what was sent.
    """
    with client() as sock:
        sock.sendto(b"0123456789", netd.address("truncate", "udp"))
        assert answers(sock) == [b"0123"]


def test_reorder(netd: NetdServer) -> None:
    """
    With C{reorder} on the first datagram, two datagrams sent come back swapped.
    """
    address = netd.address("reorder", "udp")
    with client() as sock:
        sock.sendto(b"A", address)
        sock.sendto(b"B", address)
        assert answers(sock) == [b"B", b"A"]


def test_faultsThroughTheControlAPI(netd: NetdServer) -> None:
    """
    Faults put with C{PUT /services/NAME/faults} act on the next datagram, and C{DELETE} removes them.
    """
    address = netd.address("api", "udp")
    with client() as sock:
        sock.sendto(b"whole", address)
        assert answers(sock) == [b"whole"]
        status, put = netd.api(
            "PUT", "/services/api/faults", {"faults": [{"type": "truncate", "bytes": 2, "direction": "to_client"}]}
        )
        assert (status, put["faults"]) == (200, [{"type": "truncate", "bytes": 2, "direction": "to_client"}])
        sock.sendto(b"whole", address)
        assert answers(sock) == [b"wh"]
        assert netd.api("GET", "/services/api/faults")[1]["applied"] == [1]
        status, answer = netd.api("GET", "/services/api/events?kind=fault")
        assert status == 200
        events = answer["events"]
        assert [(e["fault"], e["kept"]) for e in events] == [("truncate", 2)]
        assert netd.api("DELETE", "/services/api/faults")[0] == 200
        sock.sendto(b"whole", address)
        assert answers(sock) == [b"whole"]


def test_multiplyingDuplicatesRefusedByTheControlAPI(netd: NetdServer) -> None:
    """
    A PUT of duplicate faults that would make more than 64 datagrams of one, or of more than 32 faults, is refused with a 400 naming faults, and the faults in force stay.
    """
    address = netd.address("api", "udp")
    chained = [{"type": "duplicate", "copies": 10, "direction": "to_client"}] * 3
    status, answer = netd.api("PUT", "/services/api/faults", {"faults": chained})
    assert status == 400
    assert "faults: the duplicate faults make up to 1331 datagrams of one" in str(answer)
    status, answer = netd.api("PUT", "/services/api/faults", {"faults": [{"type": "drop", "first": 1}] * 33})
    assert status == 400
    assert "faults: 33 faults; at most 32" in str(answer)
    assert netd.api("GET", "/services/api/faults")[1]["faults"] == []
    with client() as sock:
        sock.sendto(b"once", address)
        assert answers(sock) == [b"once"]
