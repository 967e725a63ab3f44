"""
Stream and TLS handshake faults end to end: netd runs as a subprocess with
faults in its config file (and set through C{PUT /services/NAME/faults}), and
real clients (Python sockets, Python's ssl module, C{openssl s_client}) show
what a client of a faulty server sees: short reads, slow round trips, resets,
EOFs, silence, TLS alerts and handshakes that never end.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from netd.testing.harness import NetdServer

from .conftest import IO_TIMEOUT, connect, recvExactly, recvUntilClosed, requireTool
from .test_tls import sClient

pytestmark = pytest.mark.integration

LATENCY_MS = 150
SLICE = 3
SHORT_WAIT = 0.5
"""
Seconds a client waits for bytes that must not come.
"""


def echo(name: str, faults: str = "[]", plugin: str = "echo", extra: str = "") -> str:
    """
    One echo service (raw framing) with these faults, as TOML.
    """
    return (
        f'[[services]]\nname = "{name}"\nplugin = "{plugin}"\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
        f'framing = "raw"\nfaults = {faults}\n{extra}\n'
    )


TLS = 'tls = { certificate = "auto", handshake_timeout = 5 }'

CONFIG = "".join(
    [
        echo("plain"),
        echo("api"),
        echo("slice", f'[{{ type = "slice", size = {SLICE}, delay = 20 }}]'),
        echo("latency", f'[{{ type = "latency", ms = {LATENCY_MS}, direction = "to_client" }}]'),
        echo("reset", '[{ type = "reset_after", bytes = 5, direction = "to_client" }]'),
        echo("close", '[{ type = "close_after", bytes = 7, direction = "to_client" }]'),
        echo("stall", '[{ type = "stall_after", bytes = 4, direction = "to_client" }]'),
        echo("blackhole", '[{ type = "blackhole" }]'),
        echo("refuse", '[{ type = "refuse" }]'),
        echo("refuse-rst", '[{ type = "refuse", reset = true }]'),
        echo("first-two", '[{ type = "refuse", reset = true, first = 2 }]'),
        echo("tls-slice", '[{ type = "slice", size = 1, direction = "both" }]', "tls-echo", TLS),
        echo("tls-abort", '[{ type = "tls_abort", alert = "protocol_version" }]', "tls-echo", TLS),
        echo("tls-garbage", '[{ type = "tls_garbage" }]', "tls-echo", TLS),
        echo("tls-stall", '[{ type = "tls_stall" }]', "tls-echo", TLS),
    ]
)


@pytest.fixture(scope="module")
def netd(startModuleNetd: Any) -> NetdServer:
    """
    One netd for the module, with a service per fault.
    """
    started: NetdServer = startModuleNetd(CONFIG)
    return started


def roundTrip(client: socket.socket, data: bytes = b"ping") -> float:
    """
    Seconds from sending C{data} to having its echo back.
    """
    started = time.monotonic()
    client.sendall(data)
    assert recvExactly(client, len(data)) == data
    return time.monotonic() - started


def assertSilent(client: socket.socket) -> None:
    """
    Nothing comes for L{SHORT_WAIT} seconds, and the connection is not closed.
    """
    client.settimeout(SHORT_WAIT)
    with pytest.raises(TimeoutError):
        client.recv(1024)


def test_slicedReads(netd: NetdServer) -> None:
    """
    Through slice, no recv of a Python socket gets more than the slice size, and every byte comes, in order.
    """
    data = bytes(range(48, 48 + 30))
    with connect(netd.address("slice")) as client:
        client.sendall(data)
        received = b""
        sizes = []
        while len(received) < len(data):
            chunk = client.recv(4096)
            assert chunk, "closed early"
            sizes.append(len(chunk))
            received += chunk
    assert received == data
    assert max(sizes) <= SLICE
    assert len(sizes) >= len(data) // SLICE


def test_latencyLowerBound(netd: NetdServer) -> None:
    """
    Round trips through latency take at least its milliseconds; the same echo without it is faster.
    """
    with connect(netd.address("latency")) as slow, connect(netd.address("plain")) as fast:
        slowTimes = [roundTrip(slow) for _ in range(3)]
        fastTimes = [roundTrip(fast) for _ in range(3)]
    assert min(slowTimes) >= LATENCY_MS / 1000 - 0.002
    assert min(fastTimes) < LATENCY_MS / 1000


def test_resetAfter(netd: NetdServer) -> None:
    """
    reset_after sends exactly its bytes, then the client's next recv fails with ECONNRESET.
    """
    with connect(netd.address("reset")) as client:
        client.sendall(b"0123456789")
        assert recvExactly(client, 5) == b"01234"
        with pytest.raises(ConnectionResetError):
            client.recv(1024)


def test_closeAfter(netd: NetdServer) -> None:
    """
    close_after sends exactly its bytes, then a clean EOF.
    """
    with connect(netd.address("close")) as client:
        client.sendall(b"abcdefghijklmnop")
        client.settimeout(IO_TIMEOUT)
        received = b""
        while chunk := client.recv(1024):
            received += chunk
    assert received == b"abcdefg"


def test_stallAfter(netd: NetdServer) -> None:
    """
    stall_after sends its bytes, then nothing, with the connection still open.
    """
    with connect(netd.address("stall")) as client:
        client.sendall(b"abcdefgh")
        assert recvExactly(client, 4) == b"abcd"
        assertSilent(client)
        client.sendall(b"still open")


def test_blackhole(netd: NetdServer) -> None:
    """
    blackhole accepts and reads, and never answers: the client's recv times out, the connection stays open.
    """
    with connect(netd.address("blackhole")) as client:
        client.sendall(b"hello?")
        assertSilent(client)
        client.sendall(b"anyone?")
        assertSilent(client)


def test_refuse(netd: NetdServer) -> None:
    """
    refuse accepts the connection and closes it at once: the client reads EOF.
    """
    with connect(netd.address("refuse")) as client:
        started = time.monotonic()
        assert client.recv(1024) == b""
    assert time.monotonic() - started < 1


def resetAtOnce(address: tuple[str, int]) -> None:
    """
    Assert that a connection to C{address} is reset before any byte: the
    client's connect (when the RST beats its check of the connection) or its
    first recv fails with ECONNRESET.
    """
    with pytest.raises(ConnectionResetError):
        with connect(address) as client:
            client.recv(1024)


def test_refuseReset(netd: NetdServer) -> None:
    """
    refuse with reset = true resets the connection: the client sees ECONNRESET.
    """
    resetAtOnce(netd.address("refuse-rst"))


def test_firstTwoThenWorks(netd: NetdServer) -> None:
    """
    A reset fault with first = 2 resets two connections, the third is echoed; GET shows the count, the event log each reset.
    """
    for _ in range(2):
        resetAtOnce(netd.address("first-two"))
    with connect(netd.address("first-two")) as client:
        roundTrip(client)
    status, answer = netd.api("GET", "/services/first-two/faults")
    assert status == 200
    assert answer["applied"] == [2]
    status, answer = netd.api("GET", "/services/first-two/events?kind=fault")
    assert status == 200
    assert [(e["fault"], e["reset"]) for e in answer["events"]] == [("refuse", True), ("refuse", True)]
    status, answer = netd.api("GET", "/services/first-two/events?kind=connection")
    assert [e["ended"] for e in answer["events"]][:2] == ["reset by fault refuse"] * 2


def test_faultsThroughTheAPI(netd: NetdServer) -> None:
    """
    PUT sets a latency on new and open connections, GET shows it with its count, DELETE makes the open one fast again.
    """
    address = netd.address("api")
    with connect(address) as before:
        assert roundTrip(before) < LATENCY_MS / 1000
        status, answer = netd.api(
            "PUT", "/services/api/faults", {"faults": [{"type": "latency", "ms": LATENCY_MS, "direction": "to_client"}]}
        )
        assert status == 200, answer
        assert answer["faults"][0]["type"] == "latency"
        assert roundTrip(before) >= LATENCY_MS / 1000 - 0.002
        with connect(address) as after:
            assert roundTrip(after) >= LATENCY_MS / 1000 - 0.002
        status, answer = netd.api("GET", "/services/api/faults")
        assert answer["applied"] == [2]
        status, answer = netd.api("DELETE", "/services/api/faults")
        assert status == 200 and answer["faults"] == []
        assert roundTrip(before) < LATENCY_MS / 1000


def test_apiRefusesBadFaults(netd: NetdServer) -> None:
    """
    A PUT with a fault that cannot act on the service is a 400 naming its key path, and nothing changes.
    """
    status, answer = netd.api("PUT", "/services/api/faults", {"faults": [{"type": "tls_stall"}]})
    assert status == 400
    assert "faults[0].type" in json.dumps(answer)
    assert netd.api("GET", "/services/api/faults")[1]["faults"] == []


def test_metricsCountFaults(netd: NetdServer) -> None:
    """
    /metrics counts the faults applied by type.
    """
    with connect(netd.address("refuse")) as client:
        client.recv(1024)
    with urllib.request.urlopen(netd.adminURL("/metrics"), timeout=IO_TIMEOUT) as response:
        text = response.read().decode()
    samples = [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "netd_faults_applied_total" and sample.labels.get("type") == "refuse"
    ]
    assert samples and max(s.value for s in samples) >= 1


# TLS.


def unverified() -> ssl.SSLContext:
    """
    A client context that does not check the (development) certificate.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_sClientThroughSliceOne(netd: NetdServer) -> None:
    """
    openssl s_client completes a handshake through slice = 1 (both ways) and gets its line echoed.
    """
    requireTool("openssl")
    result = sClient(netd.address("tls-slice"))
    assert result.echoed, result.output


def test_pythonThroughSliceOne(netd: NetdServer) -> None:
    """
    Python's ssl module completes a handshake through slice = 1 and gets its echo, one byte per TLS record read.
    """
    with socket.create_connection(netd.address("tls-slice"), timeout=IO_TIMEOUT) as raw:
        with unverified().wrap_socket(raw, server_hostname="localhost") as client:
            client.sendall(b"sliced")
            assert recvExactly(client, 6) == b"sliced"


def test_tlsAbortPython(netd: NetdServer) -> None:
    """
    tls_abort with alert = "protocol_version" makes Python's ssl fail the handshake with that alert.
    """
    with socket.create_connection(netd.address("tls-abort"), timeout=IO_TIMEOUT) as raw:
        with pytest.raises(ssl.SSLError) as info:
            unverified().wrap_socket(raw, server_hostname="localhost")
    assert "PROTOCOL_VERSION" in str(info.value).upper()


def test_tlsAbortSClient(netd: NetdServer) -> None:
    """
    openssl s_client reports the protocol_version alert of tls_abort, and no handshake.
    """
    requireTool("openssl")
    result = sClient(netd.address("tls-abort"))
    assert not result.echoed
    assert "alert protocol version" in result.output, result.output


def test_tlsGarbage(netd: NetdServer) -> None:
    """
    tls_garbage makes Python's ssl fail: what came back is not a TLS record (a wrong version number).
    """
    with socket.create_connection(netd.address("tls-garbage"), timeout=IO_TIMEOUT) as raw:
        with pytest.raises(ssl.SSLError) as info:
            unverified().wrap_socket(raw, server_hostname="localhost")
    assert "WRONG_VERSION_NUMBER" in str(info.value).upper() or "wrong version number" in str(info.value)


def test_tlsStall(netd: NetdServer) -> None:
    """
    tls_stall makes a Python ssl handshake wait in vain: it times out.
    """
    with socket.create_connection(netd.address("tls-stall"), timeout=IO_TIMEOUT) as raw:
        raw.settimeout(1.0)
        with pytest.raises(TimeoutError):
            unverified().wrap_socket(raw, server_hostname="localhost")


def test_untouchedServiceStillEchoes(netd: NetdServer) -> None:
    """
    Alongside every fault, a service without faults echoes normally, and EOF ends it cleanly.
    """
    with connect(netd.address("plain")) as client:
        roundTrip(client, b"x" * 10000)
        client.shutdown(socket.SHUT_WR)
        assert recvUntilClosed(client) == b""
