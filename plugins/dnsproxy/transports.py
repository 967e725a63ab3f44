"""
The ways to reach an upstream: a pool of UDP sockets (L{UDPPool}), and one
persistent TCP or TLS connection per stream upstream (L{StreamUpstream}).

Both do what keeps forged answers out: each query goes out with a fresh
random ID (the client's is put back by the resolver), never one already
outstanding on the same socket or connection, and an answer is accepted only
if it carries an outstanding ID and the query's question, and over UDP comes
from the address queried.  Anything else is dropped and counted
(C{upstream_spoofed_dropped}).  Over UDP a query leaves from a random socket
of a pool bound to kernel-chosen ports.  A stream connection is opened on
first use, pipelines its queries, and is closed after the resolver's
C{idleTimeout} seconds with nothing outstanding.

Every query out is also entered in the resolver's L{Outstanding}, so that a
query of ours that comes back to the service is recognised as a loop.

A query that cannot be sent, or whose connection is lost, fails with
L{AttemptError}; answering in time is the resolver's affair
(L{netd_plugins.dnsproxy.resolver}).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IStreamClientEndpoint, ISystemHandle
from twisted.internet.protocol import DatagramProtocol
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.framing import FRAMINGS, FramedFactory, FramedProtocol
from netd.interfaces import IFrameConnection, IFrameReceiver, IStreamHandler
from netd.tls import clientCreator, describeTLSFailure

from .upstream import Upstream
from .wire import HEADER_SIZE, Question, answerMatches

if TYPE_CHECKING:
    from .resolver import UpstreamResolver

MAX_UDP_ANSWER = 65535
"""
The largest datagram read from an upstream.
"""


class AttemptError(Exception):
    """
    One attempt failed at once (no connection, connection lost, send error).

    @ivar retryable: whether another attempt at the same upstream may work
        (a connection lost mid-query, perhaps closed by the upstream as idle
        just as the query went out: the next attempt opens a new one).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class Outstanding:
    """
    The (ID, question) of every query out to an upstream, for loop detection.
    """

    def __init__(self) -> None:
        self.keys: Counter[tuple[int, bytes, int, int]] = Counter()

    def add(self, queryID: int, question: Question) -> None:
        """
        One more query out.
        """
        self.keys[_key(queryID, question)] += 1

    def remove(self, queryID: int, question: Question) -> None:
        """
        A query answered, timed out or abandoned.
        """
        key = _key(queryID, question)
        self.keys[key] -= 1
        if self.keys[key] <= 0:
            del self.keys[key]

    def has(self, queryID: int, question: Question) -> bool:
        """
        Whether a query with this ID and question is out.
        """
        return _key(queryID, question) in self.keys


def _key(queryID: int, question: Question) -> tuple[int, bytes, int, int]:
    """
    What identifies a query out: its ID and its question (name without case).
    """
    return (queryID, question.key, question.qtype, question.qclass)


class _Pending:
    """
    One query sent and not yet answered, on a UDP socket or a stream connection.

    @ivar deferred: fires with the answer; cancelling it forgets the query
        (L{cancel}).
    @ivar address: for UDP, the (host, port) the answer must come from.
    """

    __slots__ = ("queries", "queryID", "question", "address", "onCancel", "deferred")

    def __init__(
        self,
        queries: _PendingQueries,
        queryID: int,
        question: Question,
        address: tuple[str, int] | None,
        onCancel: Callable[[], None] | None,
    ) -> None:
        self.queries = queries
        self.queryID = queryID
        self.question = question
        self.address = address
        self.onCancel = onCancel
        self.deferred: Deferred[bytes] = Deferred(self.cancel)

    def cancel(self, deferred: Deferred[bytes]) -> None:
        """
        The query's Deferred was cancelled: forget the query, if it still waits.
        """
        queries = self.queries
        if queries.byID.get(self.queryID) is self:
            del queries.byID[self.queryID]
            queries.resolver.outstanding.remove(self.queryID, self.question)
            if self.onCancel is not None:
                self.onCancel()


class _PendingQueries:
    """
    The queries sent on one UDP socket or one stream connection and not yet
    answered, by the ID each went out with: what UDP and streams share of
    choosing IDs, matching answers and failing what is left.  Each query
    waiting here is also in the resolver's L{Outstanding}.
    """

    def __init__(self, resolver: UpstreamResolver) -> None:
        self.resolver = resolver
        self.byID: dict[int, _Pending] = {}

    def __bool__(self) -> bool:
        """
        Whether any query is waiting.
        """
        return bool(self.byID)

    def freshID(self) -> int:
        """
        A random 16-bit ID not waiting here.
        """
        while True:
            queryID = self.resolver.random.getrandbits(16)
            if queryID not in self.byID:
                return queryID

    def add(
        self,
        queryID: int,
        question: Question,
        address: tuple[str, int] | None = None,
        onCancel: Callable[[], None] | None = None,
    ) -> Deferred[bytes]:
        """
        Wait for the answer to a query sent with C{queryID}; the Deferred fires
        with it (see L{take}).  Cancelling the Deferred forgets the query and
        calls C{onCancel}.
        """
        entry = _Pending(self, queryID, question, address, onCancel)
        self.byID[queryID] = entry
        self.resolver.outstanding.add(queryID, question)
        return entry.deferred

    def take(self, message: bytes, source: Any = None) -> _Pending | None:
        """
        The waiting query C{message} answers, no longer waiting, for the caller
        to fire; L{None} if it answers none (an ID not waiting, another
        question, or for UDP another source than the address queried).
        """
        queryID = int.from_bytes(message[:2], "big")
        entry = self.byID.get(queryID) if len(message) >= HEADER_SIZE else None
        if (
            entry is None
            or (entry.address is not None and not _sameAddress(source, entry.address))
            or not answerMatches(message, queryID, entry.question)
        ):
            return None
        del self.byID[queryID]
        self.resolver.outstanding.remove(queryID, entry.question)
        return entry

    def failAll(self, reason: str, *, retryable: bool = False) -> None:
        """
        Fail every waiting query with L{AttemptError}.
        """
        pending, self.byID = self.byID, {}
        for queryID, entry in pending.items():
            self.resolver.outstanding.remove(queryID, entry.question)
            entry.deferred.errback(AttemptError(reason, retryable=retryable))


def _sameAddress(addr: Any, expected: tuple[str, int]) -> bool:
    """
    Whether a datagram's source (a 2-tuple, or a 4-tuple for IPv6) is C{expected}.
    """
    if addr[1] != expected[1]:
        return False
    if addr[0] == expected[0]:
        return True
    try:
        return ipaddress.ip_address(addr[0]) == ipaddress.ip_address(expected[0])
    except ValueError:
        return False


class _UDPSocket(DatagramProtocol):
    """
    One socket of the UDP pool, with the queries outstanding on it by ID.
    """

    noisy = False
    send: Callable[[bytes, tuple[str, int]], object]

    def __init__(self, pool: UDPPool) -> None:
        self.pool = pool
        self.pending = _PendingQueries(pool.resolver)

    def startProtocol(self) -> None:
        """
        Send straight through the socket's C{sendto} when the transport
        exposes its socket: Twisted's C{write} checks each upstream address
        for IP-ness three times over, and the upstreams' addresses are
        checked when the config is read.
        """
        if ISystemHandle.providedBy(self.transport):
            self.send = self.transport.getHandle().sendto
        else:
            self.send = self.transport.write  # type: ignore[union-attr]

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """
        Hand the datagram to the pool to match it.
        """
        self.pool.datagramReceived(self, datagram, addr)


class UDPPool:
    """
    The UDP sockets queries leave from: C{size} per local interface, made on
    first use.  Loopback upstreams are queried from sockets bound to the
    loopback address (so nothing off the machine can reach those ports), the
    others from sockets bound to the wildcard address of their family.
    """

    def __init__(self, resolver: UpstreamResolver, size: int) -> None:
        self.resolver = resolver
        self.size = size
        self.sockets: dict[str, list[_UDPSocket]] = {}
        self.ports: list[IListeningPort] = []
        self._byHost: dict[str, list[_UDPSocket]] = {}

    def _socketsFor(self, upstream: Upstream) -> list[_UDPSocket]:
        """
        The pool for the upstream's family and scope, bound now if it is new
        (the pool of each upstream address is remembered: reading the address
        with L{ipaddress} costs some microseconds, for every query).
        """
        sockets = self._byHost.get(upstream.host)
        if sockets is None:
            sockets = self._byHost[upstream.host] = self._bind(upstream)
        return sockets

    def _bind(self, upstream: Upstream) -> list[_UDPSocket]:
        """
        The pool for the upstream's family and scope, bound now if it is new.
        """
        address = ipaddress.ip_address(upstream.host)
        if address.is_loopback:
            interface = "::1" if upstream.isIPv6 else "127.0.0.1"
        else:
            interface = "::" if upstream.isIPv6 else "0.0.0.0"
        sockets = self.sockets.get(interface)
        if sockets is None:
            sockets = []
            opened: list[IListeningPort] = []
            try:
                for _ in range(self.size):
                    protocol = _UDPSocket(self)
                    reactor = self.resolver.reactor
                    opened.append(reactor.listenUDP(0, protocol, interface=interface, maxPacketSize=MAX_UDP_ANSWER))
                    sockets.append(protocol)
            except (OSError, CannotListenError):
                for port in opened:
                    port.stopListening()
                raise
            self.ports.extend(opened)
            self.sockets[interface] = sockets
        return sockets

    def query(self, upstream: Upstream, query: bytes, question: Question) -> Deferred[bytes]:
        """
        Send the query from a random socket with a random ID not outstanding
        there; the Deferred fires with the matching answer (ID as sent).
        """
        try:
            sockets = self._socketsFor(upstream)
        except (OSError, CannotListenError) as e:
            return fail(AttemptError(f"cannot open a UDP socket: {e}"))
        sock = self.resolver.random.choice(sockets)
        queryID = sock.pending.freshID()
        address = (upstream.host, upstream.port)
        try:
            sock.send(queryID.to_bytes(2, "big") + query[2:], address)
        except OSError as e:
            return fail(AttemptError(f"send failed: {e}"))
        return sock.pending.add(queryID, question, address)

    def datagramReceived(self, sock: _UDPSocket, datagram: bytes, addr: Any) -> None:
        """
        Accept an answer only from the address queried, with an ID outstanding
        on this socket and the question asked; count and drop anything else.
        """
        entry = sock.pending.take(datagram, addr)
        if entry is None:
            self.resolver.counters["upstream_spoofed_dropped"] += 1
            self.resolver.log.debug(
                "dropped a UDP datagram from {peer} that answers no outstanding query", peer=f"{addr[0]}:{addr[1]}"
            )
            return
        entry.deferred.callback(datagram)

    def close(self) -> list[Deferred[Any]]:
        """
        Fail what is outstanding and stop listening; the Deferreds fire when
        the ports are closed.
        """
        for sockets in self.sockets.values():
            for sock in sockets:
                sock.pending.failAll("the resolver stopped")
        stopping = [maybeDeferred(port.stopListening) for port in self.ports]
        self._byHost.clear()
        self.sockets.clear()
        self.ports.clear()
        return stopping


@implementer(IFrameReceiver)
class _StreamConnection:
    """
    One TCP or TLS connection to an upstream, with its queries outstanding by ID.

    @ivar open: whether new queries may be sent on it.
    @ivar lost: fires when the connection is gone.
    """

    connection: IFrameConnection

    def __init__(self, client: StreamUpstream) -> None:
        self.client = client
        self.pending = _PendingQueries(client.resolver)
        self.open = False
        self.idleCall: IDelayedCall | None = None
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self, connection: IFrameConnection) -> None:
        """
        Ready to send (over TLS the handshake goes on meanwhile; what is sent waits for it).
        """
        self.connection = connection
        self.open = True
        self._idleCheck()

    def send(self, query: bytes, question: Question) -> Deferred[bytes]:
        """
        Send the query with a random ID not outstanding on this connection.
        """
        queryID = self.pending.freshID()
        d = self.pending.add(queryID, question, onCancel=self._idleCheck)
        self._stopIdleTimer()
        self.connection.sendFrame(queryID.to_bytes(2, "big") + query[2:])
        return d

    def frameReceived(self, frame: bytes) -> None:
        """
        Match an answer to its query by ID and question; drop and count anything else.
        """
        entry = self.pending.take(frame)
        if entry is None:
            resolver = self.client.resolver
            resolver.counters["upstream_spoofed_dropped"] += 1
            resolver.log.debug(
                "dropped a message from {upstream} that answers no outstanding query", upstream=self.client.upstream
            )
            return
        self._idleCheck()
        entry.deferred.callback(frame)

    def connectionLost(self, reason: Failure) -> None:
        """
        Fail what was outstanding (the resolver moves on to the next upstream).
        """
        self._retire()
        resolver = self.client.resolver
        tlsWhy = describeTLSFailure(reason)
        why = reason.getErrorMessage()
        if tlsWhy is not None:
            resolver.log.warn(
                "TLS with upstream {upstream} failed (certificate not accepted, or handshake error): {reason}",
                upstream=self.client.upstream,
                reason=tlsWhy,
            )
            why = f"TLS failed: {tlsWhy}"
        else:
            resolver.log.debug(
                "connection to upstream {upstream} closed: {reason}", upstream=self.client.upstream, reason=why
            )
        self.pending.failAll(f"connection lost: {why}", retryable=tlsWhy is None)
        self.lost.callback(None)

    def close(self) -> None:
        """
        Close once written; no new queries go on this connection.
        """
        self._retire()
        self.connection.loseConnection()

    def _retire(self) -> None:
        """
        No new queries go on this connection: the next query opens another.
        """
        self.open = False
        self._stopIdleTimer()
        self.client.connectionGone(self)

    def _stopIdleTimer(self) -> None:
        """
        Forget the idle close, if one is scheduled.
        """
        if self.idleCall is not None:
            self.idleCall.cancel()
            self.idleCall = None

    def _idleCheck(self) -> None:
        """
        With nothing outstanding, close after the idle timeout.
        """
        if self.open and not self.pending and self.idleCall is None:
            self.idleCall = self.client.resolver.reactor.callLater(self.client.resolver.idleTimeout, self._idle)

    def _idle(self) -> None:
        """
        The idle timeout passed.
        """
        self.idleCall = None
        self.client.resolver.log.debug("closing idle connection to upstream {upstream}", upstream=self.client.upstream)
        self.close()


def _unwrapTLS(protocol: Any) -> FramedProtocol:
    """
    The framed protocol inside a TLS connection.
    """
    assert isinstance(protocol, TLSMemoryBIOProtocol)
    return cast(FramedProtocol, protocol.wrappedProtocol)


@implementer(IStreamHandler)
class StreamUpstream:
    """
    The persistent connection to one TCP or TLS upstream: opened on first use,
    reopened on demand.
    """

    def __init__(self, resolver: UpstreamResolver, upstream: Upstream) -> None:
        self.resolver = resolver
        self.upstream = upstream
        self.factory = FramedFactory(FRAMINGS["u16"], 65535, self, resolver.counters, resolver.log)
        self.connection: _StreamConnection | None = None
        self.connecting: Deferred[Any] | None = None
        self.waiters: list[Deferred[_StreamConnection]] = []

    def newConnection(self) -> _StreamConnection:
        """
        The receiver of a new connection (L{FramedFactory} asks).
        """
        return _StreamConnection(self)

    def query(self, query: bytes, question: Question) -> Deferred[bytes]:
        """
        Send on the open connection, or once a new one is open.
        """
        connection = self.connection
        if connection is not None and connection.open:
            return connection.send(query, question)
        waiter: Deferred[_StreamConnection] = Deferred(self.waiters.remove)
        self.waiters.append(waiter)
        if self.connecting is None:
            self.connecting = self._connect()
            self.connecting.addCallbacks(self._connected, self._connectFailed)
        return waiter.addCallback(lambda connection: connection.send(query, question))

    def _connect(self) -> Deferred[FramedProtocol]:
        """
        Connect to the upstream; the Deferred fires with the framed protocol.

        TLS is added with a L{TLSMemoryBIOFactory} given the injected reactor
        as its clock (what L{twisted.internet.endpoints.wrapClientTLS} does,
        except that it would schedule its write flushes on the global reactor).
        """
        upstream = self.upstream
        reactor = self.resolver.reactor
        endpointType = TCP6ClientEndpoint if upstream.isIPv6 else TCP4ClientEndpoint
        endpoint: IStreamClientEndpoint = endpointType(
            reactor, upstream.host, upstream.port, timeout=self.resolver.timeout
        )
        if upstream.transport != "tls":
            return endpoint.connect(self.factory)  # type: ignore[return-value]
        assert upstream.serverName is not None
        options = clientCreator(upstream.serverName, trustRoot=self.resolver.trustRoot())
        tls = TLSMemoryBIOFactory(options, True, self.factory, clock=reactor)
        return endpoint.connect(tls).addCallback(_unwrapTLS)

    def _connected(self, protocol: FramedProtocol) -> None:
        """
        Connected: the waiting queries go out.  (The idle close of a
        connection that none of them uses was scheduled as it was made.)
        """
        self.connecting = None
        connection = protocol.receiver
        assert isinstance(connection, _StreamConnection)
        waiters, self.waiters = self.waiters, []
        if not connection.open:
            for waiter in waiters:
                waiter.errback(AttemptError("connection lost as it opened"))
            return
        self.connection = connection
        for waiter in waiters:
            waiter.callback(connection)

    def _connectFailed(self, reason: Failure) -> None:
        """
        Could not connect (or L{close} stopped connecting): the waiting queries fail.
        """
        self.connecting = None
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter.errback(AttemptError(f"cannot connect: {reason.getErrorMessage()}"))

    def connectionGone(self, connection: _StreamConnection) -> None:
        """
        A connection closed or is closing; the next query opens a new one.
        """
        if self.connection is connection:
            self.connection = None

    def close(self) -> list[Deferred[Any]]:
        """
        Stop connecting, close the connection; the Deferreds fire when it is gone.
        """
        waiting = []
        if self.connecting is not None:
            self.connecting.cancel()
        connection = self.connection
        if connection is not None:
            connection.close()
            waiting.append(connection.lost)
        return waiting
