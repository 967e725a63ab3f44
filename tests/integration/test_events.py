"""
The event log end to end: netd runs as a subprocess with its control API on
port 0; real clients (Python sockets, C{openssl s_client}) connect to an echo
and a TLS echo service, and C{GET /services/NAME/events} must show each
connection as the client made it: its address, the bytes it sent and got,
how it ended, and what its TLS handshake agreed on.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import time
from typing import Any

import pytest

from netd.testing.harness import NetdServer

from .conftest import IO_TIMEOUT, connect, echoService, recvExactly, requireTool

pytestmark = pytest.mark.integration

CONFIG = (
    echoService("echo", ["tcp:0:interface=127.0.0.1"], idle_timeout=0)
    + echoService("small", ["tcp:0:interface=127.0.0.1"], events=2)
    + """\
[[services]]
name = "tls-echo"
plugin = "tls-echo"
listen = ["tcp:0:interface=127.0.0.1"]
tls = { certificate = "auto", alpn = ["y"] }
"""
)


def waitForEvents(netd: NetdServer, service: str, count: int, query: str = "") -> dict[str, Any]:
    """
    Poll the service's events until at least C{count} are kept (netd records a
    connection once it has seen it close); return the answer.
    """
    deadline = time.monotonic() + IO_TIMEOUT
    while True:
        status, body = netd.api("GET", f"/services/{service}/events{query}")
        assert status == 200, body
        if len(body["events"]) >= count or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


@pytest.fixture(scope="module")
def netd(startModuleNetd: Any) -> NetdServer:
    """
    One netd with an echo service, an echo keeping 2 events, and a TLS echo offering ALPN "y".
    """
    started: NetdServer = startModuleNetd(CONFIG)
    return started


def test_echoConnectionEvent(netd: NetdServer) -> None:
    """
    A client that sends 11 bytes, reads the echo and closes shows as one connection event with its own address, 11 bytes each way and "closed by peer".
    """
    netd.api("DELETE", "/services/echo/events")
    client = connect(netd.address("echo"))
    with client:
        here = client.getsockname()
        client.sendall(b"hello world")
        assert recvExactly(client, 11) == b"hello world"
    body = waitForEvents(netd, "echo", 1)
    [event] = body["events"]
    assert event["kind"] == "connection"
    assert event["peer"] == f"{here[0]}:{here[1]}"
    assert event["local"] == "{}:{}".format(*netd.address("echo"))
    assert (event["bytes_in"], event["bytes_out"], event["ended"], event["tls"]) == (11, 11, "closed by peer", None)
    assert 0 <= event["duration"] < IO_TIMEOUT
    assert abs(event["opened"] - time.time()) < 60


def test_resetAndClear(netd: NetdServer) -> None:
    """
    A client that resets its connection shows as "reset by peer"; DELETE clears the log, after which only new events show, with seq still counting up.
    """
    netd.api("DELETE", "/services/echo/events")
    client = connect(netd.address("echo"))
    client.sendall(b"x")
    assert recvExactly(client, 1) == b"x"
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    [reset] = waitForEvents(netd, "echo", 1)["events"]
    assert reset["ended"] == "reset by peer"
    status, cleared = netd.api("DELETE", "/services/echo/events")
    assert (status, cleared["events"]) == (200, [])
    assert netd.api("GET", "/services/echo/events")[1]["events"] == []
    with connect(netd.address("echo")) as client:
        client.sendall(b"y")
        assert recvExactly(client, 1) == b"y"
    [after] = waitForEvents(netd, "echo", 1)["events"]
    assert after["seq"] > reset["seq"]
    assert after["ended"] == "closed by peer"


def test_fullRingCountsDropped(netd: NetdServer) -> None:
    """
    A service keeping 2 events keeps the last 2 of 3 connections and reports 1 dropped.
    """
    ports = []
    for n in range(3):
        with connect(netd.address("small")) as client:
            ports.append(client.getsockname()[1])
            client.sendall(b"z" * (n + 1))
            assert recvExactly(client, n + 1) == b"z" * (n + 1)
        waitForEvents(netd, "small", 1, f"?since={n}")
    body = waitForEvents(netd, "small", 2)
    assert (body["size"], body["dropped"]) == (2, 1)
    assert [e["bytes_in"] for e in body["events"]] == [2, 3]
    assert [e["peer"].rsplit(":", 1)[1] for e in body["events"]] == [str(p) for p in ports[1:]]


def sClient(address: tuple[str, int], *args: str) -> str:
    """
    Run C{openssl s_client} against C{address} with C{args}: send a line,
    wait (bounded) for its echo, then close its input so that it closes the
    connection; return what it printed.
    """
    marker = b"netd-events-marker\n"
    command = [requireTool("openssl"), "s_client", "-connect", f"{address[0]}:{address[1]}", *args]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdin is not None and process.stdout is not None
    output = bytearray()
    deadline = time.monotonic() + IO_TIMEOUT
    try:
        process.stdin.write(marker)
        process.stdin.flush()
        while marker not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if ready:
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:
                    break
                output += chunk
        process.stdin.close()
        process.wait(timeout=IO_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=IO_TIMEOUT)
        process.stdout.close()
    assert marker in output, output.decode(errors="replace")
    return output.decode(errors="replace")


def test_tlsConnectionEvent(netd: NetdServer) -> None:
    """
    An openssl s_client connection with -servername x -alpn y shows in the TLS echo's events with the version, cipher, SNI and ALPN it negotiated.
    """
    netd.api("DELETE", "/services/tls-echo/events")
    output = sClient(netd.address("tls-echo"), "-servername", "x", "-alpn", "y", "-tls1_3")
    assert "ALPN protocol: y" in output
    [event] = waitForEvents(netd, "tls-echo", 1)["events"]
    tls = event["tls"]
    assert (tls["version"], tls["sni"], tls["alpn"], tls["client_certificate"], tls["resumed"]) == (
        "TLSv1.3",
        "x",
        "y",
        None,
        False,
    )
    assert tls["cipher"] and tls["cipher"] in output
    assert event["bytes_in"] > len(b"netd-events-marker\n") and event["bytes_out"] > event["bytes_in"]


def test_tlsHandshakeFailureEvent(netd: NetdServer) -> None:
    """
    An openssl s_client offering only an ALPN protocol the service does not speak shows as a connection event with the alpn_mismatch failure.
    """
    netd.api("DELETE", "/services/tls-echo/events")
    command = [requireTool("openssl"), "s_client", "-connect", "{}:{}".format(*netd.address("tls-echo")), "-alpn", "h2"]
    done = subprocess.run(command, input=b"", capture_output=True, timeout=IO_TIMEOUT)
    assert done.returncode != 0
    [event] = waitForEvents(netd, "tls-echo", 1)["events"]
    assert event["tls"]["failure"] == "alpn_mismatch"
    assert "version" not in event["tls"]


def paddedQuery(name: str, size: int, queryId: int) -> bytes:
    """
    A query for C{name} (type A) with an OPT record whose padding option (RFC 7830) makes it C{size} bytes long.
    """
    question = (
        b"".join(bytes([len(label)]) + label.encode("ascii") for label in name.split(".")) + b"\x00\x00\x01\x00\x01"
    )
    padding = size - 12 - len(question) - 11 - 4
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 4 + padding) + struct.pack("!HH", 12, padding) + bytes(padding)
    return struct.pack("!6H", queryId, 0x0100, 1, 0, 0, 1) + question + opt


def test_cacheHitEventsDoNotKeepQueries(startNetd: Any, dnsUpstream: Any) -> None:
    """
    A thousand cache hits from 60 KB padded queries over TCP, each kept as a query event, grow netd's resident memory by far less than the 60 MB the queries weigh: the events keep the name and type they show, not the messages.
    """
    config = f"""\
[[services]]
name = "dns"
plugin = "dns-proxy"
listen = ["tcp:0:interface=127.0.0.1"]
upstreams = ["{dnsUpstream.upstream}"]
events = 1000
"""
    netd: NetdServer = startNetd(config)

    def ask(stream: socket.socket, queryId: int) -> bytes:
        query = paddedQuery("www.example.test", 60_000, queryId)
        stream.sendall(struct.pack("!H", len(query)) + query)
        length = struct.unpack("!H", recvExactly(stream, 2))[0]
        return recvExactly(stream, length)

    with connect(netd.address("dns", "tcp")) as stream:
        for queryId in range(50):
            assert ask(stream, queryId)[3] & 0x0F == 0
        before = netd.rssBytes()
        for queryId in range(1000):
            ask(stream, queryId)
        grown = netd.rssBytes() - before
    body = waitForEvents(netd, "dns", 1000, "?kind=query")
    assert body["events"][-1]["cache_hit"] and body["events"][-1]["name"] == "www.example.test"
    assert grown < 15 * 2**20, f"resident memory grew by {grown} bytes"
