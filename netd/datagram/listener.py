"""
The core's side of a UDP socket: counts datagrams, puts them through the
service's datagram faults when it has some, and hands them to the plugin.

Two guards against a UDP service becoming a reflector or a loop, which every
answering UDP plugin needs: a datagram from a port netd itself listens on (an
echo answering an echo, a service answering itself through a spoofed source)
never reaches the plugin (L{OwnPorts}, for every UDP service), and
L{SourceRateLimit}, a token bucket per source address in a bounded table, that
a plugin applies with its own defaults (echo's C{rate} and C{burst}; a DNS
server's peers rate-limit answers by more than their source, and leave it off
by default).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime, ISystemHandle
from twisted.internet.protocol import DatagramProtocol
from zope.interface import implementer

from netd.interfaces import IDatagramHandler, IDatagramSender
from netd.metrics import Counters
from netd.reactors.udp import IBatchingDatagramProtocol, IBatchingDatagramTransport


class DatagramFaultChain(Protocol):
    """
    The datagram faults of one listener, both ways.
    """

    def received(self, datagram: bytes, peer: Any) -> None:
        """
        A datagram arrived: through the faults, then to the plugin.
        """

    def sending(self, datagram: bytes, peer: Any) -> None:
        """
        The plugin sends a datagram: through the faults, then from the socket.
        """

    def stop(self) -> None:
        """
        The listener stopped: forget what is held, cancel every timer.
        """


class DatagramFaults(Protocol):
    """
    A service's datagram faults, as its listeners see them (the service's
    L{netd.faults.datagrams.DatagramFaultSet}).

    @ivar inForce: whether there are any.
    """

    inForce: bool

    def chainFor(
        self,
        clock: IReactorTime,
        counters: Counters,
        deliver: Callable[[bytes, Any], None],
        transmit: Callable[[bytes, Any], None],
    ) -> DatagramFaultChain:
        """
        The faults of one listener, which hands what comes out of them to
        C{deliver} (received) and C{transmit} (sent).
        """

    def onChange(self, listener: Callable[[], None]) -> None:
        """
        Call C{listener} after each change of the faults.
        """


class OwnPorts(Counter[int]):
    """
    The UDP port numbers netd listens on, as a multiset (two addresses may
    share a number): a datagram whose source port is one of them comes from
    netd itself, or claims to.  A L{Counter} whose ports stay keys only while
    listened on, so that C{port in ownPorts}, asked of every datagram, is the
    dict's own test rather than a method of ours.
    """

    def add(self, port: int) -> None:
        """
        A listener bound C{port}.
        """
        self[port] += 1

    def remove(self, port: int) -> None:
        """
        A listener on C{port} stopped.
        """
        self[port] -= 1
        if self[port] <= 0:
            del self[port]


LISTENING_PORTS = OwnPorts()
"""
The UDP ports of every service of this netd process (its services' listeners
register here; a listener made without it, as in a plugin's tests, checks none).
"""

MAX_SOURCES = 16384
"""
The source addresses a L{SourceRateLimit} remembers (about 3 MiB); beyond it
the one not seen for the longest time is forgotten.
"""


class SourceRateLimit:
    """
    A token bucket per source address: C{burst} datagrams at once, refilled
    at C{rate} a second.

    The buckets live in a table of at most C{maxSources} addresses, kept in
    the order they were last seen: when a new address finds it full, the
    least recently seen one is forgotten (its bucket would start full again).
    Spoofed sources can churn the table, each getting one burst: the limit
    bounds what one address can be sent, not the sum over a forged range.
    """

    def __init__(self, rate: float, burst: int, clock: IReactorTime, maxSources: int = MAX_SOURCES) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._maxSources = maxSources
        self._buckets: dict[str, tuple[float, float]] = {}

    def allows(self, host: str) -> bool:
        """
        Whether one more datagram from C{host} is within its rate; takes a token if so.
        """
        now = self._clock.seconds()
        buckets = self._buckets
        entry = buckets.pop(host, None)
        if entry is None:
            tokens = self._burst
            if len(buckets) >= self._maxSources:
                del buckets[next(iter(buckets))]
        else:
            tokens = min(self._burst, entry[0] + (now - entry[1]) * self._rate)
        allowed = tokens >= 1.0
        buckets[host] = (tokens - 1.0 if allowed else tokens, now)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)


@implementer(IDatagramSender, IBatchingDatagramProtocol)
class DatagramListener(DatagramProtocol):
    """
    One bound UDP socket of a service.

    A protocol instance serves one socket, so a service listening on several UDP
    addresses has one of these per address, all feeding the same handler.

    Faults: while the service has no datagram faults, a datagram costs one
    truth test more than without faults; otherwise each one, received or
    sent, goes through the listener's L{DatagramFaultChain}.

    Loops: a datagram from one of C{ownPorts} is dropped before the faults
    and the plugin, and counted as C{datagrams_from_own_port}.
    """

    noisy = False
    _send: Callable[[bytes, Any], object]
    _faulting = False
    _faults: DatagramFaults | None = None
    _chain: DatagramFaultChain | None = None
    _bound: int | None = None

    def __init__(
        self,
        handler: IDatagramHandler,
        counters: Counters,
        faults: DatagramFaults | None = None,
        clock: IReactorTime | None = None,
        ownPorts: OwnPorts | None = None,
    ) -> None:
        """
        @param faults: the service's datagram faults, which act on this socket.
        @param clock: times the faults that hold datagrams back; needed with C{faults}.
        @param ownPorts: netd's UDP ports (L{LISTENING_PORTS}), which this
            one joins while it listens; datagrams from them are dropped.  An
            empty set of its own when unset.
        """
        self.handler = handler
        self.counters = counters
        self.ownPorts = ownPorts if ownPorts is not None else OwnPorts()
        if faults is not None:
            if clock is None:
                raise TypeError("a DatagramListener with faults needs a clock")
            self._faults = faults
            self._chain = faults.chainFor(clock, counters, self._deliver, self._transmit)
            self._faulting = faults.inForce
            faults.onChange(self._faultsChanged)

    def _faultsChanged(self) -> None:
        """
        The control API changed the service's faults: datagrams go through them or not.
        """
        assert self._faults is not None
        self._faulting = self._faults.inForce

    def startProtocol(self) -> None:
        """
        Choose how answers go out: in batches on a port that batches
        (L{netd.reactors.udp.BatchingPort}), else straight through the socket's
        C{sendto} when the transport exposes its socket.  The addresses
        answered come from the socket itself, so Twisted's C{write}, which
        checks each one for IP-ness three times over (about a quarter of the
        cost of a DNS cache hit), has nothing left to check.
        """
        getHost = getattr(self.transport, "getHost", None)
        port = getattr(getHost(), "port", None) if getHost is not None else None
        if isinstance(port, int) and port:
            self._bound = port
            self.ownPorts.add(port)
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
        The socket is closed: what the faults hold back is dropped, their
        timers cancelled, and its port is no longer one of netd's.
        """
        if self._bound is not None:
            self.ownPorts.remove(self._bound)
            self._bound = None
        if self._chain is not None:
            self._chain.stop()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """
        Count the datagram and pass it, with this socket to answer on, to the
        plugin (through the faults, when there are some), unless it comes
        from one of netd's own ports.
        """
        self.counters["datagrams_received"] += 1
        if addr[1] in self.ownPorts:
            self.counters["datagrams_from_own_port"] += 1
            return
        if self._faulting:
            assert self._chain is not None
            self._chain.received(datagram, addr)
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
        if self._faulting:
            assert self._chain is not None
            self._chain.sending(datagram, peer)
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
