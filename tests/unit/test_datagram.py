"""
The core's UDP side: answers go out through the socket directly, and a failed send is counted, not raised.
"""

from __future__ import annotations

import errno
from typing import Any

import attrs
from twisted.internet.interfaces import ISystemHandle
from zope.interface import implementer

from netd.datagram import DatagramListener
from netd.metrics import Counters
from netd_plugins.echo import EchoHandler


@attrs.define
class FakeSocket:
    """
    A socket whose sendto records datagrams, or fails with C{error}.
    """

    sent: list[tuple[bytes, Any]] = attrs.Factory(list)
    error: int | None = None

    def sendto(self, datagram: bytes, address: Any) -> int:
        if self.error is not None:
            raise OSError(self.error, "failed")
        self.sent.append((datagram, address))
        return len(datagram)


@implementer(ISystemHandle)
@attrs.define
class SocketTransport:
    """
    A UDP transport that exposes its socket, as Twisted's udp.Port does; its write must not be used.
    """

    socket: FakeSocket

    def getHandle(self) -> FakeSocket:
        return self.socket

    def write(self, datagram: bytes, address: Any) -> None:
        raise AssertionError("write used instead of the socket's sendto")


def listening(socket: FakeSocket) -> tuple[DatagramListener, Counters]:
    """
    An echo datagram listener started on a transport around C{socket}.
    """
    counters = Counters()
    listener = DatagramListener(EchoHandler(), counters)
    listener.makeConnection(SocketTransport(socket))  # type: ignore[arg-type]
    return listener, counters


def test_answersGoStraightThroughTheSocket() -> None:
    """
    When the transport exposes its socket, answers are sent with the socket's sendto, to the address they came from.
    """
    socket = FakeSocket()
    listener, counters = listening(socket)
    listener.datagramReceived(b"ping", ("127.0.0.1", 5000))
    assert socket.sent == [(b"ping", ("127.0.0.1", 5000))]
    assert (counters["datagrams_received"], counters["datagrams_sent"]) == (1, 1)


def test_failedSendIsCountedNotRaised() -> None:
    """
    A send the kernel refuses (a full buffer here) is dropped and counted, and the listener goes on.
    """
    socket = FakeSocket(error=errno.EAGAIN)
    listener, counters = listening(socket)
    listener.datagramReceived(b"ping", ("127.0.0.1", 5000))
    socket.error = None
    listener.datagramReceived(b"again", ("127.0.0.1", 5000))
    assert counters["datagrams_send_failed"] == 1
    assert socket.sent == [(b"again", ("127.0.0.1", 5000))]
