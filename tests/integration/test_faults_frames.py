"""
Frame faults end to end: a real netd runs framed echo services with frame
faults, and real clients (Python sockets, dig over TCP) check what they
receive: a frame in pieces, frames merged into one read, a frame over the
client's limit, a cut frame then EOF, a prefix that lies.
"""

from __future__ import annotations

import json
import socket
import struct
import time
import urllib.request
from typing import Any

import pytest

from netd.testing.harness import NetdServer

from .conftest import IO_TIMEOUT, connect, dig, echoService, recvExactly, recvUntilClosed

pytestmark = pytest.mark.integration

PIECE_DELAY = 0.2
"""
Seconds between the pieces of a split frame: long enough for each piece to be
read on its own.
"""

SERVICES = {
    "split": ("u32", f'[{{ type = "split_frame", pieces = 3, delay = {PIECE_DELAY * 1000} }}]'),
    "merge": ("line", '[{ type = "merge_frames", count = 2, wait = 5000 }]'),
    "oversize": ("u32", '[{ type = "oversize_frame", size = 70000 }]'),
    "truncate": ("netstring", '[{ type = "truncate_frame" }]'),
    "corrupt": ("u16", '[{ type = "corrupt_length", length = 9 }]'),
    "api": ("netstring", "[]"),
}
"""
One echo service per fault: its framing and its faults.
"""


@pytest.fixture(scope="module")
def netd(startModuleNetd: Any) -> NetdServer:
    """
    One netd with the echo services of L{SERVICES}.
    """
    config = "".join(
        echoService(name, ["tcp:0:interface=127.0.0.1"], framing=framing) + f"faults = {faults}\n\n"
        for name, (framing, faults) in SERVICES.items()
    )
    return startModuleNetd(config)  # type: ignore[no-any-return]


def reads(client: socket.socket, count: int) -> list[bytes]:
    """
    Each C{recv} until C{count} bytes have arrived, as they came.
    """
    chunks: list[bytes] = []
    deadline = time.monotonic() + IO_TIMEOUT
    while sum(map(len, chunks)) < count:
        client.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = client.recv(65536)
        assert chunk, f"closed after {chunks!r}"
        chunks.append(chunk)
    return chunks


def test_splitFrame(netd: NetdServer) -> None:
    """
    With C{split_frame}, the client's reads see one u32 frame, prefix included, in three pieces.
    """
    frame = struct.pack(">I", 9) + b"123456789"
    with connect(netd.address("split")) as client:
        client.sendall(frame)
        chunks = reads(client, len(frame))
    assert b"".join(chunks) == frame
    assert [len(c) for c in chunks] == [5, 4, 4]


def test_mergeFrames(netd: NetdServer) -> None:
    """
    With C{merge_frames}, the answer to the first line waits for the second, and both arrive in one read.
    """
    with connect(netd.address("merge")) as client:
        client.sendall(b"one\n")
        client.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.recv(65536)
        client.sendall(b"two\n")
        client.settimeout(IO_TIMEOUT)
        assert client.recv(65536) == b"one\ntwo\n"


def test_oversizeFrame(netd: NetdServer) -> None:
    """
    With C{oversize_frame}, a client whose limit is 65536 bytes is sent a 70000-byte frame: its payload, padded.
    """
    limit = 65536
    with connect(netd.address("oversize")) as client:
        client.sendall(struct.pack(">I", 5) + b"hello")
        (length,) = struct.unpack(">I", recvExactly(client, 4))
        assert length == 70000 > limit
        assert recvExactly(client, length) == b"hello" + bytes(70000 - 5)


def test_truncateFrame(netd: NetdServer) -> None:
    """
    With C{truncate_frame}, the client gets the first half of its netstring back, then EOF.
    """
    with connect(netd.address("truncate")) as client:
        client.sendall(b"10:0123456789,")
        assert recvUntilClosed(client) == b"10:0123"


def test_corruptLength(netd: NetdServer) -> None:
    """
    With C{corrupt_length}, the u16 prefix says 9 bytes where 5 follow.
    """
    with connect(netd.address("corrupt")) as client:
        client.sendall(b"\x00\x05hello")
        assert recvExactly(client, 7) == b"\x00\x09hello"


def test_faultsThroughTheControlAPI(netd: NetdServer) -> None:
    """
    Frame faults put through the control API act on the next frame of a connection already open.
    """
    with connect(netd.address("api")) as client:
        client.sendall(b"5:hello,")
        assert recvExactly(client, 8) == b"5:hello,"
        body = json.dumps({"faults": [{"type": "corrupt_length", "length": 7}]}).encode()
        headers = {"Content-Type": "application/json", **netd.adminHeaders()}
        request = urllib.request.Request(
            netd.adminURL("/services/api/faults"), data=body, method="PUT", headers=headers
        )
        with urllib.request.urlopen(request, timeout=IO_TIMEOUT):
            pass
        client.sendall(b"5:hello,")
        assert recvExactly(client, 8) == b"7:hello,"


def test_digOverTCPThroughSplitFrames(startNetd: Any) -> None:
    """
    dig over TCP still gets its answer when every frame of the dns-proxy (u16 framing) comes in pieces.
    """
    config = """\
[[services]]
name = "dns"
plugin = "dns-proxy"
listen = ["tcp:0:interface=127.0.0.1"]
upstreams = ["udp:127.0.0.1:9"]
faults = [{ type = "split_frame", pieces = 4, delay = 50 }]

[services.records]
"netd.test" = { A = ["127.0.0.1"] }
"""
    netd = startNetd(config)
    result = dig(netd.address("dns"), "+tcp", "netd.test", "A")
    assert result.last.status == "NOERROR", result.output
    assert result.last.data("A") == ["127.0.0.1"]
    applied = json.loads(urllib.request.urlopen(netd.adminURL("/services/dns/faults"), timeout=IO_TIMEOUT).read())
    assert applied["applied"] == [1]
