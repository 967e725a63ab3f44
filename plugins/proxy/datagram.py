"""
The proxy's datagrams: each client address (a session) gets a UDP socket of
its own towards the C{udp_upstream}, made on its first datagram, so that the
upstream's answers on that socket go back to that client alone, sent through
the core's listener (and so through the service's datagram faults).  Sessions
end after C{udp_session_timeout} seconds without a datagram either way, or,
at C{udp_max_sessions}, the least recently active one makes room for a new
client.  The proxy's README tells the story ("UDP").
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar

import attrs
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall, IListeningPort, ISystemHandle
from twisted.internet.protocol import DatagramProtocol

from netd.config.options import InvalidValue, describeValue
from netd.faults.datagrams import describeDatagramPeer
from netd.interfaces import IDatagramSender, PluginContext

MAX_DATAGRAM = 65535
"""
The largest datagram read from the upstream.
"""

Peer = tuple[str, int]


@attrs.frozen
class DatagramUpstream:
    """
    Where the proxy sends its clients' datagrams: C{udp:HOST:PORT}, HOST an
    IP address (IPv6 in brackets), kept in canonical form, which is the form
    the socket reports a datagram's source in.
    """

    host: str
    port: int

    configTypeName: ClassVar[str] = "a UDP upstream: 'udp:HOST:PORT' (HOST an IP address, IPv6 in brackets)"
    configJsonSchema: ClassVar[dict[str, Any]] = {"type": "string", "pattern": "^udp:"}

    @classmethod
    def fromConfig(cls, value: object) -> DatagramUpstream:
        """
        Parse C{udp:HOST:PORT}.

        @raise InvalidValue: saying what is wrong and what is expected.
        """
        if not isinstance(value, str):
            raise InvalidValue(f"expected {cls.configTypeName}, got {describeValue(value)}")
        scheme, colon, rest = value.partition(":")
        if scheme != "udp" or not colon:
            raise InvalidValue(f"{value!r} is not {cls.configTypeName}")
        if rest.startswith("["):
            host, bracket, after = rest[1:].partition("]")
            if not bracket or not after.startswith(":"):
                raise InvalidValue(f"{value!r} is not {cls.configTypeName}: expected [IPV6]:PORT after udp:")
            portText = after[1:]
        else:
            host, portColon, portText = rest.rpartition(":")
            if not portColon:
                raise InvalidValue(f"{value!r} has no port; expected {cls.configTypeName}")
            if ":" in host:
                raise InvalidValue(f"{value!r}: an IPv6 address goes in brackets: udp:[{host}]:{portText}")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise InvalidValue(
                f"{value!r}: {host!r} is not an IP address; expected {cls.configTypeName} (names are not resolved)"
            ) from None
        if not (portText.isascii() and portText.isdigit() and 1 <= int(portText) <= 65535):
            raise InvalidValue(f"{value!r}: port {portText!r} is not a number from 1 to 65535")
        return cls(address.compressed, int(portText))

    def toConfig(self) -> str:
        """
        The config string: L{fromConfig}'s inverse.
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"udp:{host}:{self.port}"

    def __str__(self) -> str:
        return self.toConfig()

    @property
    def bindInterface(self) -> str:
        """
        The local address a session's socket binds: the loopback address of
        the upstream's family for a loopback upstream (nothing off the machine
        can then reach the socket), else the family's wildcard address.
        """
        address = ipaddress.ip_address(self.host)
        if address.version == 6:
            return "::1" if address.is_loopback else "::"
        return "127.0.0.1" if address.is_loopback else "0.0.0.0"

    def sourceOf(self, port: int) -> Peer:
        """
        The address a datagram from a session socket bound on C{port}
        arrives from at a socket of this machine: the socket's own address,
        or, bound to a wildcard, the upstream's (the source the kernel picks
        for a datagram to a local address).
        """
        interface = self.bindInterface
        return (self.host if interface in ("0.0.0.0", "::") else interface, port)


class SessionSources(dict[Peer, frozenset[object]]):
    """
    The source address of every session socket of this process, with the
    proxy services a datagram from it has passed through: a proxy that sees
    itself among those of a new client's address is in a loop (its upstream
    is itself, or a proxy that forwards back to it).
    """


SESSION_SOURCES = SessionSources()
"""
The session sources of every UDP proxy of this netd process.
"""


class Session(DatagramProtocol):
    """
    One client's socket towards the upstream, and what went through it.

    @ivar peer: the client's address.
    @ivar sender: the listener the client's datagrams arrive on, which sends
        the upstream's answers back.
    @ivar lastActive: when a datagram last went either way (the reactor's time).
    """

    noisy = False
    port: IListeningPort
    source: Peer | None = None
    _send: Callable[[bytes, Peer], object]

    def __init__(self, table: SessionTable, peer: Peer, sender: IDatagramSender, opened: float) -> None:
        self.table = table
        self.peer = peer
        self.sender = sender
        self.opened = self.lastActive = opened
        self.datagramsUp = self.datagramsDown = self.bytesUp = self.bytesDown = 0

    def startProtocol(self) -> None:
        """
        Send straight through the socket's C{sendto} when the transport
        exposes its socket (the upstream's address was checked with the config).
        """
        transport: Any = self.transport
        socket: Any = transport.getHandle() if ISystemHandle.providedBy(transport) else None
        self._send = transport.write if socket is None else socket.sendto

    def send(self, datagram: bytes, upstream: Peer) -> bool:
        """
        Send a client's datagram to the upstream; whether the kernel took it.
        """
        try:
            self._send(datagram, upstream)
        except OSError:
            return False
        self.datagramsUp += 1
        self.bytesUp += len(datagram)
        return True

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """
        A datagram on this session's socket: the table checks its source.
        """
        self.table.fromUpstream(self, datagram, addr)


def _sessionEvent(
    peer: Peer, upstream: str, opened: float, counts: tuple[int, int, int, int], ended: str
) -> dict[str, Any]:
    """
    The fields of a C{"udp_session"} event; C{counts} are the datagrams
    and bytes to and from the upstream.
    """
    return {
        "peer": describeDatagramPeer(peer),
        "upstream": upstream,
        "opened": opened,
        "datagrams_to_upstream": counts[0],
        "datagrams_from_upstream": counts[1],
        "bytes_to_upstream": counts[2],
        "bytes_from_upstream": counts[3],
        "ended": ended,
    }


class SessionTable:
    """
    The sessions of one proxy service, by client address and the listener it
    came in on (two listeners may see the same client address), kept in the
    order they were last active: the first is the one to expire or to evict.
    One timer, for the first session's expiry, serves the whole table.
    """

    _expiry: IDelayedCall | None = None
    _bindFailing = False

    def __init__(
        self,
        upstream: DatagramUpstream,
        timeout: float,
        maxSessions: int,
        context: PluginContext,
        sources: SessionSources = SESSION_SOURCES,
    ) -> None:
        """
        @param timeout: seconds a session may stay without a datagram either way.
        @param maxSessions: the most sessions at once.
        @param sources: the session sources of the process (L{SESSION_SOURCES}),
            which this table's sessions join, to detect loops.
        """
        self.upstream = upstream
        self.address: Peer = (upstream.host, upstream.port)
        self.timeout = timeout
        self.maxSessions = maxSessions
        self.context = context
        self.sources = sources
        self.sessions: OrderedDict[tuple[Peer, IDatagramSender], Session] = OrderedDict()
        context.counters.gauge("udp_sessions", lambda: len(self.sessions), "UDP proxy sessions open now.")

    def datagramReceived(self, datagram: bytes, peer: Peer, sender: IDatagramSender) -> None:
        """
        A client's datagram (through the service's faults): to the upstream,
        from the client's session socket, made now if it has none.
        """
        key = (peer, sender)
        session = self.sessions.get(key)
        context = self.context
        if session is None:
            session = self._open(peer, sender)
            if session is None:
                return
            self.sessions[key] = session
        else:
            session.lastActive = context.reactor.seconds()
            self.sessions.move_to_end(key)
        if session.send(datagram, self.address):
            context.counters["datagrams_to_upstream"] += 1
        else:
            context.counters["datagrams_to_upstream_failed"] += 1

    def _open(self, peer: Peer, sender: IDatagramSender) -> Session | None:
        """
        A session for a new client, its socket bound, and the least recently
        active session closed when the table is full; L{None} (the
        datagram dropped, counted) when the client is one of the process's
        own session sockets that this proxy forwarded for (a loop), or no
        socket can be opened.
        """
        context = self.context
        counters = context.counters
        passedThrough = self.sources.get(peer, frozenset())
        if self in passedThrough:
            counters["udp_loops_dropped"] += 1
            return None
        reactor = context.reactor
        session = Session(self, peer, sender, reactor.seconds())
        try:
            session.port = reactor.listenUDP(
                0, session, interface=self.upstream.bindInterface, maxPacketSize=MAX_DATAGRAM
            )
        except (OSError, CannotListenError) as e:
            counters["udp_session_failures"] += 1
            if not self._bindFailing:
                self._bindFailing = True
                context.log.warn(
                    "cannot open a UDP socket towards {upstream} for the client {peer}: {error}; "
                    "its datagrams are dropped until a socket opens",
                    upstream=str(self.upstream),
                    peer=describeDatagramPeer(peer),
                    error=str(e),
                    event="udp_session_failed",
                )
            return None
        self._bindFailing = False
        if len(self.sessions) >= self.maxSessions:
            _, oldest = self.sessions.popitem(last=False)
            counters["udp_sessions_evicted"] += 1
            self._close(oldest, "evicted")
        host = session.port.getHost()
        session.source = self.upstream.sourceOf(getattr(host, "port", 0))
        self.sources[session.source] = passedThrough | {self}
        counters["udp_sessions_opened"] += 1
        if self._expiry is None:
            self._expiry = reactor.callLater(self.timeout, self._expire)
        return session

    def fromUpstream(self, session: Session, datagram: bytes, addr: Any) -> None:
        """
        A datagram on a session's socket: from the upstream, it goes to the
        session's client through the listener (and its faults); from any
        other source it is dropped, counted.
        """
        counters = self.context.counters
        if addr[0] != self.address[0] or addr[1] != self.address[1]:
            counters["datagrams_from_wrong_source"] += 1
            return
        counters["datagrams_from_upstream"] += 1
        session.datagramsDown += 1
        session.bytesDown += len(datagram)
        session.lastActive = self.context.reactor.seconds()
        key = (session.peer, session.sender)
        if self.sessions.get(key) is session:
            self.sessions.move_to_end(key)
        session.sender.sendDatagram(datagram, session.peer)

    def _expire(self) -> None:
        """
        Close the sessions idle for C{timeout} seconds, oldest first, and
        set the timer for the next one.
        """
        self._expiry = None
        now = self.context.reactor.seconds()
        sessions = self.sessions
        while sessions:
            session = next(iter(sessions.values()))
            if now - session.lastActive < self.timeout:
                self._expiry = self.context.reactor.callLater(session.lastActive + self.timeout - now, self._expire)
                return
            sessions.popitem(last=False)
            self.context.counters["udp_sessions_expired"] += 1
            self._close(session, "expired")

    def _close(self, session: Session, ended: str) -> Deferred[Any]:
        """
        Close a session's socket (it is already out of the table) and record
        its C{"udp_session"} event.
        """
        if session.source is not None:
            self.sources.pop(session.source, None)
        events = self.context.events
        if events.enabled:
            counts = (session.datagramsUp, session.datagramsDown, session.bytesUp, session.bytesDown)
            events.add("udp_session", _sessionEvent, session.peer, str(self.upstream), session.opened, counts, ended)
        return maybeDeferred(session.port.stopListening)

    def stop(self) -> Deferred[Any]:
        """
        The service stops: close every session; fires once their sockets are closed.
        """
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        sessions = list(self.sessions.values())
        self.sessions.clear()
        return DeferredList([self._close(session, "stopped") for session in sessions])
