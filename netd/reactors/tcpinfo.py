"""
How long ago a TCP connection last moved data, as Linux's C{TCP_INFO} tells:
what the uvloop reactor's connections read for their idle time
(L{netd.reactors.uv.StreamConnection.lastActivity}), where stamping every
read and write would cost a clock call each.

The layout of C{struct tcp_info} is Linux's ABI, read here at fixed offsets
(Python has no binding for it).  L{CANARY} checks at start-up that the
fields read are where they are expected, on a real loopback connection; if
not, the uvloop reactor's connections keep their own activity clock
(L{netd.reactors.uv.ClockedStreamConnection}).
"""

from __future__ import annotations

import select
import socket
import struct

from netd.canary import Canary, require

TIMES = struct.Struct("=III")
"""
Three fields of Linux's C{struct tcp_info}: C{tcpi_last_data_sent},
C{tcpi_last_ack_sent} (never set: "not remembered", says the kernel) and
C{tcpi_last_data_recv}, in milliseconds.
"""

TIMES_OFFSET = 44
"""
Where L{TIMES} starts: after eight one-byte fields and nine 32-bit ones.
"""

STATE_ESTABLISHED = 1
"""
C{tcpi_state} (the first byte) of an open connection.
"""


def millisecondsSinceData(sock: socket.socket) -> int:
    """
    Milliseconds since data last moved either way on C{sock}, a connected
    TCP socket (or uvloop's stand-in for one).

    @raise OSError: when the system refuses C{TCP_INFO}.
    """
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TIMES_OFFSET + TIMES.size)
    sinceSent: int
    sinceReceived: int
    sinceSent, _, sinceReceived = TIMES.unpack_from(info, TIMES_OFFSET)
    return min(sinceSent, sinceReceived)


def _check() -> None:
    """
    On a fresh loopback connection that has just carried a byte each way,
    C{TCP_INFO} says the connection is established, has never remembered an
    ACK sent, and moved data less than a second ago, at the offsets
    L{millisecondsSinceData} reads.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname(), timeout=1)
        server, _ = listener.accept()
        with client, server:
            client.sendall(b"?")
            require(select.select([server], [], [], 1)[0], "the loopback probe's byte to arrive")
            server.recv(1)
            server.sendall(b"!")
            require(select.select([client], [], [], 1)[0], "the loopback probe's answer to arrive")
            client.recv(1)
            info = server.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TIMES_OFFSET + TIMES.size)
            require(len(info) >= TIMES_OFFSET + TIMES.size, f"tcp_info of {TIMES_OFFSET + TIMES.size} bytes")
            require(info[0] == STATE_ESTABLISHED, f"tcpi_state {STATE_ESTABLISHED} at offset 0")
            sinceSent, ackSent, sinceReceived = TIMES.unpack_from(info, TIMES_OFFSET)
            require(ackSent == 0, f"tcpi_last_ack_sent (0) at offset {TIMES_OFFSET + 4}")
            require(
                sinceSent < 1000 and sinceReceived < 1000,
                f"recent data times at offsets {TIMES_OFFSET} and {TIMES_OFFSET + 8}",
            )
            require(millisecondsSinceData(server) < 1000, "millisecondsSinceData to read them")
    finally:
        listener.close()


CANARY = Canary(
    "TCP_INFO idle reading",
    _check,
    "the uvloop reactor's connections time their idleness with netd's own activity clock",
)
