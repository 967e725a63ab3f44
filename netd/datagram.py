"""
The core's side of a UDP socket: counts datagrams and hands them to the plugin.
"""

from __future__ import annotations

from typing import Any

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

    def __init__(self, handler: IDatagramHandler, counters: Counters) -> None:
        self.handler = handler
        self.counters = counters

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
        self.transport.write(datagram, peer)  # type: ignore[union-attr]
