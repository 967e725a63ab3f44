"""
Frame faults in both directions through a real proxy: netd runs as a
subprocess in front of a u32-framed upstream of the test's own (a thread
with a listening socket that records each read it gets, with its time, and
acknowledges each whole frame), and a raw socket client sees what the
to_client faults do to the acknowledgements while the upstream's record
shows what the from_client faults did to the client's frames.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from netd.testing.harness import AdminError, NetdServer

from .conftest import IO_TIMEOUT, connect, echoService, recvExactly, recvUntilClosed

pytestmark = pytest.mark.integration

SPLIT_DELAY_MS = 100


def u32(frame: bytes) -> bytes:
    """
    C{frame} behind its four-byte big-endian length.
    """
    return len(frame).to_bytes(4, "big") + frame


@attrs.define
class Upstream:
    """
    What the recording upstream got on each connection, in order: its reads
    with the monotonic time of each, and whether it ended with EOF.
    """

    address: tuple[str, int]
    connections: list[list[tuple[float, bytes]]] = attrs.Factory(list)
    ended: list[bool] = attrs.Factory(list)
    lock: threading.Lock = attrs.Factory(threading.Lock)

    def serve(self, listener: socket.socket) -> None:
        """
        Accept connections until the listener is closed, one thread each.
        """
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with self.lock:
                reads: list[tuple[float, bytes]] = []
                self.connections.append(reads)
                self.ended.append(False)
                index = len(self.ended) - 1
            threading.Thread(target=self.handle, args=(conn, reads, index), daemon=True).start()

    def handle(self, conn: socket.socket, reads: list[tuple[float, bytes]], index: int) -> None:
        """
        Record each read; answer each whole frame with C{ack:} and its payload.
        """
        conn.settimeout(IO_TIMEOUT)
        buffer = b""
        with conn:
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    with self.lock:
                        self.ended[index] = True
                    return
                with self.lock:
                    reads.append((time.monotonic(), chunk))
                buffer += chunk
                while len(buffer) >= 4 and len(buffer) >= 4 + int.from_bytes(buffer[:4], "big"):
                    size = int.from_bytes(buffer[:4], "big")
                    conn.sendall(u32(b"ack:" + buffer[4 : 4 + size]))
                    buffer = buffer[4 + size :]

    def opened(self) -> int:
        """
        How many connections the upstream has accepted so far.
        """
        with self.lock:
            return len(self.connections)

    def reads(self, index: int, count: int = 1, ended: bool = False) -> tuple[list[tuple[float, bytes]], bool]:
        """
        The reads of connection C{index} once it has C{count} of them (and its
        EOF, with C{ended}), within L{IO_TIMEOUT}.
        """
        deadline = time.monotonic() + IO_TIMEOUT
        while True:
            with self.lock:
                if len(self.connections) > index:
                    reads, done = list(self.connections[index]), self.ended[index]
                    if len(reads) >= count and (done or not ended):
                        return reads, done
            if time.monotonic() > deadline:
                raise AssertionError(f"upstream connection {index} did not get {count} reads in {IO_TIMEOUT} seconds")
            time.sleep(0.01)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    """
    The recording upstream on a loopback port the kernel picks, closed after the module.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    server = Upstream(listener.getsockname())
    thread = threading.Thread(target=server.serve, args=(listener,), daemon=True)
    thread.start()
    yield server
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    thread.join(IO_TIMEOUT)


def framedProxy(name: str, upstream: Upstream, faults: str) -> str:
    """
    One u32-framed proxy service to the recording upstream, with these faults, as TOML.
    """
    return (
        f'[[services]]\nname = "{name}"\nplugin = "proxy"\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
        f'upstream = "tcp:127.0.0.1:{upstream.address[1]}"\nframing = "u32"\nfaults = {faults}\n'
    )


@pytest.fixture(scope="module")
def netd(startModuleNetd: Any, upstream: Upstream) -> NetdServer:
    """
    One netd for the module: proxies to the recording upstream with frame
    faults from the client, towards it, and both at once; and an echo
    service, which relays nothing.
    """
    started: NetdServer = startModuleNetd(
        framedProxy(
            "split-up",
            upstream,
            f'[{{ type = "split_frame", pieces = 2, delay = {SPLIT_DELAY_MS}, direction = "from_client" }}]',
        )
        + framedProxy("cut-up", upstream, '[{ type = "truncate_frame", bytes = 6, direction = "from_client" }]')
        + framedProxy(
            "both-ways",
            upstream,
            '[{ type = "oversize_frame", size = 12, direction = "from_client" }, '
            f'{{ type = "split_frame", pieces = 2, delay = {SPLIT_DELAY_MS}, direction = "to_client" }}]',
        )
        + framedProxy("plain", upstream, "[]")
        + echoService("echo", ["tcp:0:interface=127.0.0.1"], framing="u32")
    )
    return started


def test_splitFrameReachesTheUpstreamInPieces(netd: NetdServer, upstream: Upstream) -> None:
    """
    With split_frame from the client, the upstream reads the client's frame
    in two pieces, the second at least the delay after the first; its
    acknowledgement reaches the client whole, and the fault event says
    from_client.
    """
    netd.admin.clearEvents("split-up")
    frame = u32(b"hello world")
    seen = upstream.opened()
    with connect(netd.address("split-up")) as client:
        client.sendall(frame)
        assert recvExactly(client, 19) == u32(b"ack:hello world")
        reads, _ = upstream.reads(seen, 2)
    assert [data for _, data in reads] == [frame[:8], frame[8:]]
    assert reads[1][0] - reads[0][0] >= SPLIT_DELAY_MS / 1000 * 0.9
    [event] = netd.admin.events("split-up", kind="fault")
    assert (event["fault"], event["direction"], event["framing"], event["pieces"]) == (
        "split_frame",
        "from_client",
        "u32",
        2,
    )


def test_truncateFrameGivesTheUpstreamAShortFrame(netd: NetdServer, upstream: Upstream) -> None:
    """
    With truncate_frame from the client, the upstream reads the first 6
    bytes of the client's frame, then EOF; the client's connection is
    closed in turn.
    """
    seen = upstream.opened()
    with connect(netd.address("cut-up")) as client:
        client.sendall(u32(b"PING!!"))
        assert recvUntilClosed(client) == b""
    reads, ended = upstream.reads(seen, 1, ended=True)
    assert b"".join(data for _, data in reads) == u32(b"PING!!")[:6]
    assert ended


def test_bothDirectionsAtOnce(netd: NetdServer, upstream: Upstream) -> None:
    """
    A from_client oversize_frame and a to_client split_frame act side by
    side: the upstream reads the client's frame padded to 12 bytes, and the
    client gets the upstream's acknowledgement in two pieces, the delay apart.
    """
    seen = upstream.opened()
    with connect(netd.address("both-ways")) as client:
        client.sendall(u32(b"abc"))
        answer = u32(b"ack:abc" + bytes(9))
        first = client.recv(100)
        arrived = time.monotonic()
        assert first == answer[: len(answer) // 2]
        assert recvExactly(client, len(answer) - len(first)) == answer[len(first) :]
        assert time.monotonic() - arrived >= SPLIT_DELAY_MS / 1000 * 0.9
    reads, _ = upstream.reads(seen)
    assert b"".join(data for _, data in reads) == u32(b"abc" + bytes(9))


def test_faultsFromClientThroughTheControlAPI(netd: NetdServer, upstream: Upstream) -> None:
    """
    A from_client frame fault put through the control API acts on the next
    connection's frames (corrupt_length: the upstream reads a prefix
    claiming one byte more); the same fault on the echo service, which
    relays nothing, is refused at its direction's key path.
    """
    netd.admin.setFaults("plain", [{"type": "corrupt_length", "direction": "from_client"}])
    try:
        seen = upstream.opened()
        with connect(netd.address("plain")) as client:
            client.sendall(u32(b"abcd"))
            reads, _ = upstream.reads(seen)
        assert reads[0][1] == (5).to_bytes(4, "big") + b"abcd"
    finally:
        netd.admin.clearFaults("plain")
    with pytest.raises(AdminError) as info:
        netd.admin.setFaults("echo", [{"type": "corrupt_length", "direction": "from_client"}])
    assert info.value.status == 400
    assert "faults[0].direction" in str(info.value)
