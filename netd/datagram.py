"""
The core's side of a UDP socket: counts datagrams and hands them to the plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import ISystemHandle
from twisted.internet.protocol import DatagramProtocol
from zope.interface import implementer

from netd.interfaces import IDatagramHandler, IDatagramSender
from netd.metrics import Counters


@implementer(IDatagramSender)
class DatagramListener(DatagramProtocol):
    """
    One bound UDP socket of a service.

    A protocol instance serves one socket, so a service listening on several UDP
    addresses has one of these per address, all feeding the same handler.
    """

    noisy = False
    _send: Callable[[bytes, Any], object]

    def __init__(self, handler: IDatagramHandler, counters: Counters) -> None:
        self.handler = handler
        self.counters = counters

    def startProtocol(self) -> None:
        """
        Choose how answers go out: straight through the socket's C{sendto} when
        the transport exposes its socket.  The addresses answered come from the
        socket itself, so Twisted's C{write}, which checks each one for
        IP-ness three times over (about a quarter of the cost of a DNS cache
        hit), has nothing left to check.
        """
        if ISystemHandle.providedBy(self.transport):
            self._send = self.transport.getHandle().sendto
        else:
            self._send = self.transport.write  # type: ignore[union-attr]

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """
        Count the datagram and pass it, with this socket to answer on, to the plugin.
        """
        self.counters["datagrams_received"] += 1
        self.handler.datagramReceived(datagram, addr, self)

    def sendDatagram(self, datagram: bytes, peer: tuple[str, int]) -> None:
        """
        Send one datagram from this socket.
        """
        self.counters["datagrams_sent"] += 1
        try:
            self._send(datagram, peer)
        except OSError:
            # A full socket buffer (EAGAIN), a datagram too big, an unreachable
            # peer: UDP's answer is to drop it, counted.
            self.counters["datagrams_send_failed"] += 1
