"""
The ways to reach an upstream: a pool of UDP sockets on ports that keep
changing (L{UDPPool}), and persistent, pipelined TCP or TLS connections
(L{StreamUpstream}).  Both give each query a fresh random ID and accept only
an answer with an outstanding ID and the query's question (RFC 5452), so that
forged answers are dropped; the README's design notes tell the figures.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Callable
from typing import Any, Protocol, cast

from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IStreamClientEndpoint, ISystemHandle
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.interfaces import IFrameConnection, IFrameReceiver, IStreamHandler
from netd.metrics import Counters
from netd.reactors.shared import INetdReactor
from netd.reactors.udp import CANARY as BATCHING_CANARY
from netd.reactors.udp import listenBatchingUDP
from netd.stream.framing import FRAMINGS, FramedFactory, FramedProtocol
from netd.tls.client import clientCreator, describeTLSFailure
from netd.words import counted

from .upstream import Upstream
from .wire import HEADER_SIZE, Question

_TYPE_CLASS = struct.Struct("!HH")

MAX_UDP_ANSWER = 65535
"""
The largest datagram read from an upstream.
"""

_LETTER_BITS = bytes(0x20 if chr(byte).isascii() and chr(byte).isalpha() else 0 for byte in range(256))
"""
For each byte value, the bit that flips its case: 0x20 for the ASCII letters
(the only case DNS names have), 0 for every other byte.
"""

_QR_BYTE = 0x80
"""
QR, in the header's third byte.
"""

_ONE_QUESTION = b"\x00\x01"

ID_DRAWS = 32
"""
Random IDs drawn at most for one query before the socket or connection is
taken as out of IDs.  Streams keep at most a quarter of the 65,536 IDs in
use (C{stream_pipeline} is at most 16,384) and UDP sockets at most 4,096
(C{udp_port_queries}), so 32 draws all failing has a chance of at most
4^-32 = 2^-64; the bound is what keeps a full table from spinning the daemon.
"""


def randomCase(name: bytes, random: Any) -> bytes:
    """
    C{name} (wire form) with each ASCII letter in upper or lower case at
    random, one random bit per letter (DNS 0x20); other bytes, label lengths
    included (never more than 63, so never a letter), unchanged.

    @param random: a L{random.Random} (its C{randbytes}).
    """
    size = len(name)
    flips = int.from_bytes(name.translate(_LETTER_BITS), "big") & int.from_bytes(random.randbytes(size), "big")
    return (int.from_bytes(name, "big") ^ flips).to_bytes(size, "big")


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


class CaseMismatch(AttemptError):
    """
    An answer from the address queried, with the query's ID and question,
    but with the question's name in another letter case than the one sent:
    an upstream that does not keep the case, or a forger who guessed the
    port and the ID but not the case.  Not accepted.
    """


class UpstreamBusy(AttemptError):
    """
    No room for the query at this upstream: every connection has its
    pipeline full, or no query ID is free.  Not the upstream's fault, so not
    held against its health.
    """


class Outstanding:
    """
    The (ID, question) of every query out to an upstream, for loop detection:
    how many are out under each key, what identifies a query out (its ID and
    its question, the name without case).  A plain dict, not a
    L{collections.Counter}, whose missing-key and delete hooks are Python
    calls made for every query forwarded.
    """

    def __init__(self) -> None:
        self.keys: dict[tuple[int, bytes, int, int], int] = {}

    def add(self, queryID: int, question: Question) -> None:
        """
        One more query out.
        """
        keys = self.keys
        key = (queryID, question.key, question.qtype, question.qclass)
        keys[key] = keys.get(key, 0) + 1

    def remove(self, queryID: int, question: Question) -> None:
        """
        A query answered, timed out or abandoned.
        """
        keys = self.keys
        key = (queryID, question.key, question.qtype, question.qclass)
        left = keys.get(key, 0) - 1
        if left > 0:
            keys[key] = left
        else:
            keys.pop(key, None)

    def has(self, queryID: int, question: Question) -> bool:
        """
        Whether a query with this ID and question is out.
        """
        return (queryID, question.key, question.qtype, question.qclass) in self.keys


def outgoing(queryID: int, query: bytes, question: Question, name: bytes) -> bytes:
    """
    The query as it goes upstream: with C{queryID}, and C{name} (the
    question's name, perhaps in another case) in place of the client's.
    """
    if name is question.name:
        return queryID.to_bytes(2, "big") + query[2:]
    return b"".join((queryID.to_bytes(2, "big"), query[2:HEADER_SIZE], name, query[HEADER_SIZE + len(name) :]))


class AttemptWaiter(Protocol):
    """
    Who waits for the outcome of one query sent (L{UDPPool.send}): the
    resolver's attempt, told with plain calls, without a L{Deferred}.
    """

    def attemptAnswered(self, message: bytes) -> None:
        """
        The answer came (its ID as sent).
        """

    def attemptFailed(self, reason: Failure | BaseException) -> None:
        """
        The query failed (L{AttemptError}, or L{CancelledError} once
        cancelled) or its answer was not accepted (L{CaseMismatch}).
        """


class _DeferredWaiter:
    """
    The L{AttemptWaiter} behind the L{Deferred} API (L{_PendingQueries.add}):
    the Deferred fires with the outcome; cancelling it forgets the query.
    """

    __slots__ = ("entry", "deferred")

    def __init__(self) -> None:
        self.entry: PendingQuery | None = None
        self.deferred: Deferred[bytes] = Deferred(self._cancel)

    def _cancel(self, deferred: Deferred[bytes]) -> None:
        """
        Forget the query (the Deferred fails with L{CancelledError}).
        """
        if self.entry is not None:
            self.entry.forget()

    def attemptAnswered(self, message: bytes) -> None:
        """
        Fire with the answer.
        """
        self.deferred.callback(message)

    def attemptFailed(self, reason: Failure | BaseException) -> None:
        """
        Fail with the reason.
        """
        self.deferred.errback(reason)


class PendingQuery:
    """
    One query sent and not yet answered, on a UDP socket or a stream connection.

    @ivar name: the question's name as sent (its case perhaps randomised).
    @ivar exact: whether only an answer with C{name} in the very same case
        is accepted (the others that differ in case alone fail it with
        L{CaseMismatch}).
    @ivar waiter: told the outcome.
    @ivar address: for UDP, the (host, port) the answer must come from.
    """

    __slots__ = ("queries", "queryID", "question", "name", "exact", "address", "onCancel", "waiter")

    def __init__(
        self,
        queries: _PendingQueries,
        queryID: int,
        question: Question,
        name: bytes,
        exact: bool,
        address: tuple[str, int] | None,
        onCancel: Callable[[], None] | None,
        waiter: AttemptWaiter,
    ) -> None:
        self.queries = queries
        self.queryID = queryID
        self.question = question
        self.name = name
        self.exact = exact
        self.address = address
        self.onCancel = onCancel
        self.waiter = waiter

    def forget(self) -> bool:
        """
        Stop waiting for the answer, if the query still waits (then True);
        its waiter is told nothing.
        """
        queries = self.queries
        if queries.byID.get(self.queryID) is not self:
            return False
        del queries.byID[self.queryID]
        queries.resolver.outstanding.remove(self.queryID, self.question)
        if self.onCancel is not None:
            self.onCancel()
        return True

    def cancel(self) -> None:
        """
        Abandon the query: forget it and, if it still waited, fail its
        waiter with L{CancelledError} (as cancelling a L{Deferred} does).
        """
        if self.forget():
            self.waiter.attemptFailed(CancelledError())


class ResolverSide(Protocol):
    """
    What the transports use of the resolver that owns them
    (L{netd_plugins.dnsproxy.resolver.UpstreamResolver}): its clock, limits,
    counters, log, randomness and loop detection, declared here so that the
    transports do not import the resolver built on them.
    """

    reactor: Any
    timeout: float
    idleTimeout: float
    streamConnections: int
    streamPipeline: int
    counters: Counters
    log: Logger
    random: random.Random
    outstanding: Outstanding

    def busy(self, why: str) -> UpstreamBusy:
        """
        The counted error of a query that finds no room at its upstream.
        """

    def trustRoot(self) -> Any:
        """
        What TLS upstreams' certificates are checked against.
        """


class _PendingQueries:
    """
    The queries sent on one UDP socket or one stream connection and not yet
    answered, by the ID each went out with: what UDP and streams share of
    choosing IDs, matching answers and failing what is left.  Each query
    waiting here is also in the resolver's L{Outstanding}.
    """

    def __init__(self, resolver: ResolverSide) -> None:
        self.resolver = resolver
        self.byID: dict[int, PendingQuery] = {}

    def __bool__(self) -> bool:
        """
        Whether any query is waiting.
        """
        return bool(self.byID)

    def freshID(self) -> int | None:
        """
        A random 16-bit ID not waiting here, or L{None} if L{ID_DRAWS} draws
        found none (every ID, or nearly, in use).
        """
        byID = self.byID
        draw = self.resolver.random.getrandbits
        for _ in range(ID_DRAWS):
            queryID = draw(16)
            if queryID not in byID:
                return queryID
        return None

    def add(
        self,
        queryID: int,
        question: Question,
        name: bytes,
        *,
        exact: bool = False,
        address: tuple[str, int] | None = None,
        onCancel: Callable[[], None] | None = None,
    ) -> Deferred[bytes]:
        """
        Wait for the answer to a query sent with C{queryID} and C{name}; the
        Deferred fires with it (see L{settle}).  Cancelling the Deferred
        forgets the query and calls C{onCancel}.
        """
        waiter = _DeferredWaiter()
        waiter.entry = self.wait(queryID, question, name, waiter, exact=exact, address=address, onCancel=onCancel)
        return waiter.deferred

    def wait(
        self,
        queryID: int,
        question: Question,
        name: bytes,
        waiter: AttemptWaiter,
        *,
        exact: bool = False,
        address: tuple[str, int] | None = None,
        onCancel: Callable[[], None] | None = None,
    ) -> PendingQuery:
        """
        L{add}, telling C{waiter} the outcome with plain calls; the entry
        returned abandons the query when cancelled (L{PendingQuery.cancel}).
        """
        entry = PendingQuery(self, queryID, question, name, exact, address, onCancel, waiter)
        self.byID[queryID] = entry
        self.resolver.outstanding.add(queryID, question)
        return entry

    def settle(self, message: bytes, source: Any = None) -> bool:
        """
        Give C{message} to the waiting query it answers, which no longer
        waits: its Deferred fires with the message, or fails with
        L{CaseMismatch} if it wants the exact case and the message has
        another.  False if it answers none: too short, not an answer, an ID
        not waiting, another question, or for UDP another source than the
        address queried.
        """
        if len(message) < HEADER_SIZE:
            return False
        queryID = int.from_bytes(message[:2], "big")
        entry = self.byID.get(queryID)
        if (
            entry is None
            or not message[2] & _QR_BYTE
            or message[4:6] != _ONE_QUESTION
            or (entry.address is not None and source != entry.address and not _sameAddress(source, entry.address))
        ):
            return False
        name = entry.name
        question = entry.question
        end = HEADER_SIZE + len(name)
        answered = message[HEADER_SIZE:end]
        caseDiffers = answered != name
        if (caseDiffers and answered.lower() != question.key) or message[end : end + 4] != _TYPE_CLASS.pack(
            question.qtype, question.qclass
        ):
            return False
        del self.byID[queryID]
        self.resolver.outstanding.remove(queryID, question)
        if caseDiffers and entry.exact:
            entry.waiter.attemptFailed(CaseMismatch("answered with the question in another letter case than sent"))
        else:
            entry.waiter.attemptAnswered(message)
        return True

    def failAll(self, reason: str, *, retryable: bool = False) -> None:
        """
        Fail every waiting query with L{AttemptError}.
        """
        pending, self.byID = self.byID, {}
        for queryID, entry in pending.items():
            self.resolver.outstanding.remove(queryID, entry.question)
            entry.waiter.attemptFailed(AttemptError(reason, retryable=retryable))


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

    @ivar uses: queries sent from it.
    @ivar born: when it was bound (the reactor's time).
    @ivar retired: whether another socket took its place in the pool: it
        takes no new query, and closes once nothing waits on it.
    """

    noisy = False
    send: Callable[[bytes, tuple[str, int]], object]
    port: IListeningPort

    def __init__(self, pool: UDPPool, interface: str, born: float) -> None:
        self.pool = pool
        self.interface = interface
        self.born = born
        self.uses = 0
        self.retired = False
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
        Accept an answer only from the address queried, with an ID outstanding
        on this socket and the question asked; count and drop anything else.
        """
        if not self.pending.settle(datagram, addr):
            resolver = self.pool.resolver
            resolver.counters["upstream_spoofed_dropped"] += 1
            resolver.log.debug(
                "dropped a UDP datagram from {peer} that answers no outstanding query", peer=f"{addr[0]}:{addr[1]}"
            )
            return
        if self.retired:
            self.drained()

    def drained(self) -> None:
        """
        A query on it is over: close it if it is retired and nothing waits.
        """
        if self.retired and not self.pending:
            self.pool.closeSocket(self)


class UDPPool:
    """
    The UDP sockets queries leave from: C{size} per local interface, made on
    first use, each replaced by a socket on a new random port after
    C{portQueries} queries or C{portLifetime} seconds.  Loopback upstreams are
    queried from sockets bound to the loopback address (so nothing off the
    machine can reach those ports), the others from sockets bound to the
    wildcard address of their family.

    @ivar sockets: the sockets taking new queries, by local interface.
    @ivar retiring: the replaced sockets that still have queries waiting.
    """

    def __init__(self, resolver: ResolverSide, size: int, portQueries: int, portLifetime: float) -> None:
        self.resolver = resolver
        self.size = size
        self.portQueries = portQueries
        self.portLifetime = portLifetime
        self.sockets: dict[str, list[_UDPSocket]] = {}
        self.retiring: set[_UDPSocket] = set()
        self._byHost: dict[str, list[_UDPSocket]] = {}
        self._bindFailing = False

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
            try:
                for _ in range(self.size):
                    sockets.append(self._open(interface))
            except (OSError, CannotListenError):
                for sock in sockets:
                    sock.port.stopListening()
                raise
            self.sockets[interface] = sockets
        return sockets

    def _open(self, interface: str) -> _UDPSocket:
        """
        A new socket on a port the kernel picks (at random, on Linux): on
        netd's reactors, a batching port (L{netd.reactors.udp}) that reads
        the answers waiting with one call, into the receive batch all the
        pool's sockets share; else the reactor's own port.
        """
        reactor = self.resolver.reactor
        sock = _UDPSocket(self, interface, reactor.seconds())
        if INetdReactor.providedBy(reactor) and BATCHING_CANARY.alive():
            sock.port = listenBatchingUDP(
                reactor, 0, sock, interface=interface, maxPacketSize=MAX_UDP_ANSWER, sharedBuffers=True
            )
        else:
            sock.port = reactor.listenUDP(0, sock, interface=interface, maxPacketSize=MAX_UDP_ANSWER)
        self.resolver.counters["upstream_udp_sockets_opened"] += 1
        return sock

    def _pick(self, upstream: Upstream) -> _UDPSocket:
        """
        A random socket of the upstream's pool, replaced first if it has
        served its queries or its time.
        """
        sockets = self._byHost.get(upstream.host) or self._socketsFor(upstream)
        sock = self.resolver.random.choice(sockets)
        if sock.uses >= self.portQueries or self.resolver.reactor.seconds() - sock.born >= self.portLifetime:
            sock = self._replace(sockets, sock)
        return sock

    def _replace(self, sockets: list[_UDPSocket], old: _UDPSocket) -> _UDPSocket:
        """
        Put a socket on a new port in the place of C{old}, which retires; if
        no socket can be opened (out of descriptors, say), C{old} stays on
        (logged once until a socket opens again, counted each time).
        """
        try:
            new = self._open(old.interface)
        except (OSError, CannotListenError) as e:
            self.resolver.counters["upstream_udp_socket_errors"] += 1
            if not self._bindFailing:
                self._bindFailing = True
                self.resolver.log.warn(
                    "cannot open a UDP socket for upstream queries ({error}); the old ones stay in use",
                    error=str(e),
                )
            return old
        self._bindFailing = False
        sockets[sockets.index(old)] = new
        old.retired = True
        if old.pending:
            self.retiring.add(old)
        else:
            self.closeSocket(old)
        return new

    def closeSocket(self, sock: _UDPSocket) -> Deferred[Any]:
        """
        Stop listening on a socket; the Deferred fires when it is closed.
        """
        self.retiring.discard(sock)
        return maybeDeferred(sock.port.stopListening)

    def query(self, upstream: Upstream, query: bytes, question: Question, name: bytes, exact: bool) -> Deferred[bytes]:
        """
        Send the query from a random socket with a random ID not outstanding
        there and C{name} as its question's name; the Deferred fires with the
        matching answer (ID as sent), or fails with L{CaseMismatch} if
        C{exact} and the answer has the name in another case.
        """
        waiter = _DeferredWaiter()
        sent = self.send(upstream, query, question, name, exact, waiter)
        if isinstance(sent, AttemptError):
            return fail(sent)
        waiter.entry = sent
        return waiter.deferred

    def send(
        self, upstream: Upstream, query: bytes, question: Question, name: bytes, exact: bool, waiter: AttemptWaiter
    ) -> PendingQuery | AttemptError:
        """
        L{query}, telling C{waiter} the outcome with plain calls: the entry
        of the query sent (cancel it to abandon the query), or the error
        that kept it from being sent (C{waiter} is then told nothing).
        """
        try:
            sock = self._pick(upstream)
        except (OSError, CannotListenError) as e:
            return AttemptError(f"cannot open a UDP socket: {e}")
        queryID = sock.pending.freshID()
        if queryID is None:
            sock = self._replace(self._socketsFor(upstream), sock)
            queryID = sock.pending.freshID()
            if queryID is None:
                return self.resolver.busy("no query ID free on a UDP socket")
        address = (upstream.host, upstream.port)
        try:
            sock.send(outgoing(queryID, query, question, name), address)
        except OSError as e:
            return AttemptError(f"send failed: {e}")
        sock.uses += 1
        return sock.pending.wait(queryID, question, name, waiter, exact=exact, address=address, onCancel=sock.drained)

    def close(self) -> list[Deferred[Any]]:
        """
        Fail what is outstanding and stop listening; the Deferreds fire when
        the ports are closed.
        """
        every = [sock for sockets in self.sockets.values() for sock in sockets] + list(self.retiring)
        for sock in every:
            sock.pending.failAll("the resolver stopped")
        stopping = [self.closeSocket(sock) for sock in every]
        self._byHost.clear()
        self.sockets.clear()
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

    def send(self, query: bytes, question: Question, name: bytes) -> Deferred[bytes]:
        """
        Send the query with a random ID not outstanding on this connection and
        C{name} as its question's name; an answer whose name differs from it
        in case alone is accepted (nothing off the path can forge one over TCP).
        """
        queryID = self.pending.freshID()
        if queryID is None:
            return fail(self.client.resolver.busy(f"no query ID free on a connection to {self.client.upstream}"))
        d = self.pending.add(queryID, question, name, onCancel=self._idleCheck)
        self._stopIdleTimer()
        self.connection.sendFrame(outgoing(queryID, query, question, name))
        return d

    def frameReceived(self, frame: bytes) -> None:
        """
        Match an answer to its query by ID and question; drop and count anything else.
        """
        if not self.pending.settle(frame):
            resolver = self.client.resolver
            resolver.counters["upstream_spoofed_dropped"] += 1
            resolver.log.debug(
                "dropped a message from {upstream} that answers no outstanding query", upstream=self.client.upstream
            )
            return
        self._idleCheck()

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


class _Opening:
    """
    A connection to a stream upstream being opened, and the queries waiting
    for it (at most the pipeline's worth).
    """

    def __init__(self, client: StreamUpstream) -> None:
        self.client = client
        self.waiters: list[Deferred[_StreamConnection]] = []
        self.connecting: Deferred[Any] | None = None

    def wait(self, query: bytes, question: Question, name: bytes) -> Deferred[bytes]:
        """
        Send the query once the connection is open.
        """
        waiter: Deferred[_StreamConnection] = Deferred(self.waiters.remove)
        self.waiters.append(waiter)
        return waiter.addCallback(lambda connection: connection.send(query, question, name))

    def start(self) -> None:
        """
        Connect.
        """
        self.connecting = self.client.connect()
        self.connecting.addCallbacks(self._connected, self._failed)

    def _connected(self, protocol: FramedProtocol) -> None:
        """
        Connected: the waiting queries go out.  (The idle close of a
        connection that none of them uses was scheduled as it was made.)
        """
        connection = protocol.receiver
        assert isinstance(connection, _StreamConnection)
        self.client.opened(self, connection)
        waiters, self.waiters = self.waiters, []
        if not connection.open:
            for waiter in waiters:
                waiter.errback(AttemptError("connection lost as it opened"))
            return
        for waiter in waiters:
            waiter.callback(connection)

    def _failed(self, reason: Failure) -> None:
        """
        Could not connect (or L{close} stopped connecting): the waiting queries fail.
        """
        self.client.opened(self, None)
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter.errback(AttemptError(f"cannot connect: {reason.getErrorMessage()}"))

    def cancel(self) -> None:
        """
        Stop connecting.
        """
        if self.connecting is not None:
            self.connecting.cancel()


@implementer(IStreamHandler)
class StreamUpstream:
    """
    The connections to one TCP or TLS upstream: opened on demand, each
    pipelining at most the resolver's C{streamPipeline} queries (queries
    waiting for it to open included), at most C{streamConnections} of them;
    a query that finds them all full fails at once (L{AttemptError}, counted
    C{upstream_busy}) and the resolver moves on.  New queries go on the first
    connection with room, so that the others fall idle and close.

    @ivar connections: the open connections, in the order they opened.
    @ivar opening: the connections being opened.
    """

    def __init__(self, resolver: ResolverSide, upstream: Upstream) -> None:
        self.resolver = resolver
        self.upstream = upstream
        self.factory = FramedFactory(FRAMINGS["u16"], 65535, self, resolver.counters, resolver.log)
        self.connections: list[_StreamConnection] = []
        self.opening: list[_Opening] = []

    def newConnection(self) -> _StreamConnection:
        """
        The receiver of a new connection (L{FramedFactory} asks).
        """
        return _StreamConnection(self)

    def query(self, query: bytes, question: Question, name: bytes) -> Deferred[bytes]:
        """
        Send on the first open connection with room, or once a new one is open.
        """
        pipeline = self.resolver.streamPipeline
        for connection in self.connections:
            if len(connection.pending.byID) < pipeline:
                return connection.send(query, question, name)
        for opening in self.opening:
            if len(opening.waiters) < pipeline:
                return opening.wait(query, question, name)
        limit = self.resolver.streamConnections
        if len(self.connections) + len(self.opening) >= limit:
            inFlight = f"{counted(limit, 'connection')} with {counted(pipeline, 'query', 'queries')} in flight each"
            return fail(self.resolver.busy(inFlight))
        opening = _Opening(self)
        self.opening.append(opening)
        sent = opening.wait(query, question, name)
        opening.start()
        return sent

    def connect(self) -> Deferred[FramedProtocol]:
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

    def opened(self, opening: _Opening, connection: _StreamConnection | None) -> None:
        """
        A connection being opened is open (if C{connection} is, and still
        open) or failed to open.
        """
        self.opening.remove(opening)
        if connection is not None and connection.open:
            self.connections.append(connection)

    def connectionGone(self, connection: _StreamConnection) -> None:
        """
        A connection closed or is closing; new queries go elsewhere.
        """
        if connection in self.connections:
            self.connections.remove(connection)

    def close(self) -> list[Deferred[Any]]:
        """
        Stop connecting, close the connections; the Deferreds fire when they are gone.
        """
        for opening in list(self.opening):
            opening.cancel()
        waiting = []
        for connection in list(self.connections):
            connection.close()
            waiting.append(connection.lost)
        return waiting
