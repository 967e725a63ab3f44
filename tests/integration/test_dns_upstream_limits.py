"""
The bounds on queries in flight to a TCP upstream, against a real netd
(issue 13 item 8): an upstream that accepts connections and reads queries
but never answers, and a client that sends more queries than the configured
connections and pipeline hold.  The queries past the bound get SERVFAIL at
once (no loop, no wait for the timeout), counted, while netd stays responsive.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from netd.testing.harness import NetdServer

from .conftest import IO_TIMEOUT
from .dns_upstream import buildQuery

pytestmark = pytest.mark.integration

PIPELINE = 16
CONNECTIONS = 2
QUERIES = 40


class SilentUpstream:
    """
    A TCP DNS server on loopback that reads u16-framed queries and never answers.

    @ivar frames: queries read, per connection accepted.
    """

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.frames: list[int] = []
        self.stopping = threading.Event()
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections.append(connection)
            self.frames.append(0)
            threading.Thread(target=self._read, args=(connection, len(self.frames) - 1), daemon=True).start()

    def _read(self, connection: socket.socket, index: int) -> None:
        buffered = b""
        connection.settimeout(0.1)
        while not self.stopping.is_set():
            try:
                data = connection.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            buffered += data
            while len(buffered) >= 2 and len(buffered) >= 2 + struct.unpack("!H", buffered[:2])[0]:
                size = struct.unpack("!H", buffered[:2])[0]
                buffered = buffered[2 + size :]
                self.frames[index] += 1

    def stop(self) -> None:
        """
        Stop accepting and reading; close every socket.
        """
        self.stopping.set()
        self.thread.join(timeout=IO_TIMEOUT)
        for connection in self.connections:
            connection.close()
        self.listener.close()


@pytest.fixture
def silentUpstream() -> Iterator[SilentUpstream]:
    """
    A L{SilentUpstream}, stopped at teardown.
    """
    upstream = SilentUpstream()
    yield upstream
    upstream.stop()


def test_queriesPastTheBoundFailAtOnce(startNetd: Any, silentUpstream: SilentUpstream) -> None:
    """
    With a TCP upstream that never answers, stream_connections connections of stream_pipeline queries each hold the queries (the start-up loop probe among them); every query past that gets SERVFAIL within a second instead of waiting for the 30 s timeout, counted as upstream_busy, and the control API still answers.
    """
    config = (
        "[[services]]\n"
        'name = "dns"\n'
        'plugin = "dns-proxy"\n'
        'listen = ["udp:0:interface=127.0.0.1"]\n'
        f'upstreams = ["tcp:127.0.0.1:{silentUpstream.port}"]\n'
        "timeout = 30.0\ndeadline = 30.0\ncache_size = 0\n"
        f"stream_connections = {CONNECTIONS}\nstream_pipeline = {PIPELINE}\n"
    )
    netd: NetdServer = startNetd(config)
    deadline = time.monotonic() + IO_TIMEOUT
    while sum(silentUpstream.frames) < 1:
        assert time.monotonic() < deadline, "the start-up loop probe did not reach the upstream"
        time.sleep(0.05)
    held = CONNECTIONS * PIPELINE - 1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(0.2)
        queries = [buildQuery(f"q{index}.example.test", queryId=index) for index in range(QUERIES)]
        started = time.monotonic()
        for query in queries:
            client.sendto(query, netd.address("dns", "udp"))
        servfails: dict[int, float] = {}
        while time.monotonic() - started < 3 and len(servfails) < QUERIES - held:
            try:
                answer, _ = client.recvfrom(65535)
            except TimeoutError:
                continue
            assert answer[3] & 0x0F == 2, "SERVFAIL"
            servfails[struct.unpack("!H", answer[:2])[0]] = time.monotonic() - started
    assert len(servfails) == QUERIES - held
    assert max(servfails.values()) < 1.0, servfails
    assert netd.counter("upstream_busy", "dns") == QUERIES - held
    # The queries waiting for the second connection are held as soon as netd
    # starts opening it; the upstream's accept thread may see it a little later.
    deadline = time.monotonic() + IO_TIMEOUT
    while sum(silentUpstream.frames) < CONNECTIONS * PIPELINE:
        assert time.monotonic() < deadline, silentUpstream.frames
        time.sleep(0.05)
    assert silentUpstream.frames == [PIPELINE] * CONNECTIONS
    status, body = netd.api("GET", "/health")
    assert status == 200 and body == {"status": "ok"}
