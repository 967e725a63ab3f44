"""
The core's side of a UDP socket: counts datagrams, puts them through the
service's datagram faults when it has some, and hands them to the plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime, ISystemHandle
from twisted.internet.protocol import DatagramProtocol
from zope.interface import implementer

from netd.faults.active import ActiveFault, ServiceFaults
from netd.faults.datagrams import DatagramFaults
from netd.interfaces import IDatagramHandler, IDatagramSender
from netd.metrics import Counters
from netd.udp import IBatchingDatagramProtocol, IBatchingDatagramTransport


@implementer(IDatagramSender, IBatchingDatagramProtocol)
class DatagramListener(DatagramProtocol):
    """
    One bound UDP socket of a service.

    A protocol instance serves one socket, so a service listening on several UDP
    addresses has one of these per address, all feeding the same handler.

    Faults: while the service's C{datagram} faults are empty, a datagram costs
    one truth test more than without faults; otherwise each one, received or
    sent, goes through L{DatagramFaults}.
    """

    noisy = False
    _send: Callable[[bytes, Any], object]
    _chain: tuple[ActiveFault, ...] = ()
    _faults: DatagramFaults | None = None

    def __init__(
        self,
        handler: IDatagramHandler,
        counters: Counters,
        faults: ServiceFaults | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param faults: the service's faults, whose datagram faults act on this socket.
        @param clock: times the faults that hold datagrams back; needed with C{faults}.
        """
        self.handler = handler
        self.counters = counters
        if faults is not None:
            if clock is None:
                raise TypeError("a DatagramListener with faults needs a clock")
            self._faults = DatagramFaults(faults, clock, counters, self._deliver, self._transmit)
            self._chain = faults.datagram
            faults.onChange(self._faultsChanged)

    def _faultsChanged(self) -> None:
        """
        The control API changed the service's faults: take the new datagram chain.
        """
        assert self._faults is not None
        self._chain = self._faults.faults.datagram

    def startProtocol(self) -> None:
        """
        Choose how answers go out: in batches on a port that batches
        (L{netd.udp.BatchingPort}), else straight through the socket's
        C{sendto} when the transport exposes its socket.  The addresses
        answered come from the socket itself, so Twisted's C{write}, which
        checks each one for IP-ness three times over (about a quarter of the
        cost of a DNS cache hit), has nothing left to check.
        """
        if IBatchingDatagramTransport.providedBy(self.transport):
            self._send = self.transport.send
        elif ISystemHandle.providedBy(self.transport):
            self._send = self.transport.getHandle().sendto
        else:
            self._send = self.transport.write  # type: ignore[union-attr]

    def datagramNotSent(self, error: OSError) -> None:
        """
        The batching port could not send a datagram: counted, as below.
        """
        self.counters["datagrams_send_failed"] += 1

    def stopProtocol(self) -> None:
        """
        The socket is closed: what the faults hold back is dropped, their timers cancelled.
        """
        if self._faults is not None:
            self._faults.stop()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """
        Count the datagram and pass it, with this socket to answer on, to the
        plugin (through the faults, when there are some).
        """
        self.counters["datagrams_received"] += 1
        if self._chain:
            assert self._faults is not None
            self._faults.received(datagram, addr)
            return
        self.handler.datagramReceived(datagram, addr, self)

    def _deliver(self, datagram: bytes, addr: Any) -> None:
        """
        Hand a datagram that came through the faults to the plugin.
        """
        self.handler.datagramReceived(datagram, addr, self)

    def sendDatagram(self, datagram: bytes, peer: tuple[str, int]) -> None:
        """
        Send one datagram from this socket (through the faults, when there are some).
        """
        if self._chain:
            assert self._faults is not None
            self._faults.sending(datagram, peer)
            return
        # The body of _transmit, repeated: the answer path without faults
        # pays no extra call.
        self.counters["datagrams_sent"] += 1
        try:
            self._send(datagram, peer)
        except OSError:
            self.counters["datagrams_send_failed"] += 1

    def _transmit(self, datagram: bytes, peer: tuple[str, int]) -> None:
        """
        Send one datagram from the socket, counted.
        """
        self.counters["datagrams_sent"] += 1
        try:
            self._send(datagram, peer)
        except OSError:
            # A full socket buffer (EAGAIN), a datagram too big, an unreachable
            # peer: UDP's answer is to drop it, counted.
            self.counters["datagrams_send_failed"] += 1
