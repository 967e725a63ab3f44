"""
Forwarding to upstream resolvers over UDP, TCP and DNS over TLS.

L{UpstreamResolver.resolve} takes a client's query as wire bytes and returns
the upstream's answer as wire bytes; nothing is decoded beyond the header and
the question (L{netd_plugins.dnsproxy.wire.answerMatches}).

Upstreams are written C{udp:HOST[:PORT]}, C{tcp:HOST[:PORT]},
C{tls:HOST[:PORT]:name=SERVERNAME} or C{system} (L{Upstream.fromConfig}).

How a query is forwarded:

  - Each query goes out with a fresh random ID (the client's is restored in
    the answer).  Over UDP it leaves from a random socket of a pool bound to
    kernel-chosen ports, and an answer is accepted only from the upstream's
    address, with an ID outstanding on that socket and the query's question;
    anything else is dropped and counted (C{upstream_spoofed_dropped}).  A UDP
    answer with TC set is asked again over TCP.
  - TCP and TLS upstreams get one persistent connection each, opened on first
    use, with queries pipelined and answers matched by ID and question; it is
    closed after C{idleTimeout} seconds with nothing outstanding.
  - Attempts go to the upstreams that are up, in config order (to all of
    them, in config order, when none is up).  Each attempt has C{timeout}
    seconds; a timeout, an error or a SERVFAIL/REFUSED answer moves on to the
    next upstream.  After a full pass, upstreams that I{timed out} (a lost UDP
    datagram, a slow server) are tried again while the C{deadline} allows,
    and one whose TCP/TLS connection was lost mid-query gets one more try on
    a new connection; upstreams that failed outright (refused connection,
    failed TLS) are not, so they cannot make a busy loop.  If some upstream answered SERVFAIL or REFUSED and
    nothing better came, that answer is returned; otherwise the query fails
    with L{UpstreamFailure}, at the latest at the deadline.

Health, as CoreDNS C{forward} does it: an upstream is I{down} after
C{maxFails} consecutive timeouts or errors (C{maxFails} 0: never); any
answer, whatever its rcode, resets the count, because it proves the upstream
reachable (a SERVFAIL for one broken zone does not make a resolver dead).
Every C{healthInterval} seconds each down upstream is sent C{. IN NS} over its
own transport; any well-formed answer brings it back up.

Counters: C{upstream_queries} (attempts sent, TC retries included),
C{upstream_answers} (accepted answers, any rcode), C{upstream_timeouts},
C{upstream_failures} (errors: refused or lost connections, failed TLS, send
errors), C{upstream_error_answers} (SERVFAIL/REFUSED answers that caused a
failover), C{upstream_truncated} (TC answers retried over TCP),
C{upstream_spoofed_dropped}, C{upstream_latency_ms_total} and
C{upstream_latency_count} (over accepted answers, so the mean is their
quotient), C{upstream_probes}, C{upstream_marked_down}, C{upstream_loops_detected}.

L{UpstreamResolver.isLooped} tells the handler whether a query it received
is one of the resolver's own upstream queries come back (same ID and
question as one outstanding), so that a forwarding loop is refused at once
instead of being forwarded again.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections import Counter
from typing import Any, ClassVar, Literal, cast

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IStreamClientEndpoint
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.framing import FRAMINGS, FramedFactory, FramedProtocol
from netd.interfaces import IFrameConnection, IFrameReceiver, IStreamHandler
from netd.metrics import Counters
from netd.options import InvalidValue, closeMatch, describeValue
from netd.tls import clientCreator, describeTLSFailure, loadTrustRoot

from .wire import (
    CLASS_IN,
    FLAG_RD,
    FLAG_TC,
    HEADER_SIZE,
    RCODE_MASK,
    RCODE_REFUSED,
    RCODE_SERVFAIL,
    Question,
    answerMatches,
)

Transport = Literal["udp", "tcp", "tls"]

DEFAULT_PORTS: dict[str, int] = {"udp": 53, "tcp": 53, "tls": 853}
"""
The port of each transport when an upstream string gives none.
"""

MAX_UDP_ANSWER = 65535
"""
The largest datagram read from an upstream.
"""

_TYPE_NS = 2
_PROBE_QUESTION = Question(name=b"\x00", key=b"\x00", qtype=_TYPE_NS, qclass=CLASS_IN, end=HEADER_SIZE + 5)
_PROBE_QUERY = (
    b"\x00\x00"
    + FLAG_RD.to_bytes(2, "big")
    + b"\x00\x01\x00\x00\x00\x00\x00\x00"
    + b"\x00"
    + _TYPE_NS.to_bytes(2, "big")
    + CLASS_IN.to_bytes(2, "big")
)
"""
The health probe: C{. IN NS} with RD set, as CoreDNS sends it.
"""

_RCODE_NAMES = {RCODE_SERVFAIL: "SERVFAIL", RCODE_REFUSED: "REFUSED"}


@attrs.frozen
class Upstream:
    """
    One upstream resolver, as configured.

    The config word C{system} decodes to a placeholder with C{isSystem} set
    (see L{SYSTEM}), which L{expandUpstreams} replaces with the nameservers of
    C{/etc/resolv.conf}; every other instance is a real upstream.

    @ivar transport: C{udp}, C{tcp} or C{tls} (DNS over TLS, RFC 7858).
    @ivar host: the upstream's IP address (v4 or v6), in canonical form.
    @ivar port: the upstream's port.
    @ivar serverName: for C{tls}, the name the upstream's certificate must
        carry; L{None} for the others.
    @ivar isSystem: whether this is the C{system} placeholder.
    """

    transport: Transport
    host: str
    port: int
    serverName: str | None = None
    isSystem: bool = attrs.field(default=False, kw_only=True)

    configTypeName: ClassVar[str] = (
        "an upstream: 'udp:HOST[:PORT]', 'tcp:HOST[:PORT]', 'tls:HOST[:PORT]:name=SERVERNAME' "
        "(HOST an IP address, IPv6 in brackets) or 'system'"
    )

    @classmethod
    def fromConfig(cls, value: object) -> Upstream:
        """
        Parse an upstream string.

        IPv6 addresses are written in brackets, with or without a port
        (C{udp:[::1]}, C{udp:[2001:db8::1]:5353}): a bare C{udp:::1:53} could
        be read two ways, so it is refused with the bracketed spelling as hint.
        Hosts are IP addresses, not names (netd does not resolve the names of
        its own resolvers).

        @raise InvalidValue: naming what is wrong and what is expected.
        """
        if not isinstance(value, str):
            raise InvalidValue(f"expected {cls.configTypeName}, got {describeValue(value)}")
        if value == "system":
            return SYSTEM
        if _isIP(value):
            raise InvalidValue(f"{value!r} has no transport; write udp:{_bracketed(value)} (or tcp:, tls:)")
        transport, colon, rest = value.partition(":")
        if not colon:
            hint = closeMatch(value, ["system"])
            raise InvalidValue(
                f"{value!r} is not an upstream{hint}; expected 'udp:HOST[:PORT]', 'tcp:HOST[:PORT]', "
                "'tls:HOST[:PORT]:name=SERVERNAME' or 'system'"
            )
        if transport not in DEFAULT_PORTS:
            hint = closeMatch(transport, DEFAULT_PORTS)
            raise InvalidValue(
                f"{value!r}: unknown transport {transport!r}{hint}; expected udp:, tcp:, tls: or the word system"
            )
        host, portText, params = _splitAddress(value, rest)
        port = DEFAULT_PORTS[transport]
        if portText is not None:
            if not portText.isdigit() or not portText.isascii():
                raise InvalidValue(f"{value!r}: port {portText!r} is not a number; expected 1 to 65535")
            port = int(portText)
            if not 1 <= port <= 65535:
                raise InvalidValue(f"{value!r}: port {port} is out of range; expected 1 to 65535")
        serverName = _serverName(value, transport, params)
        return cls(cast(Transport, transport), host, port, serverName)

    def toConfig(self) -> str:
        """
        The config string of this upstream (port always given): C{fromConfig}'s inverse.
        """
        if self.isSystem:
            return "system"
        text = f"{self.transport}:{_bracketed(self.host)}:{self.port}"
        if self.serverName is not None:
            text += f":name={self.serverName}"
        return text

    def __str__(self) -> str:
        """
        The config string, for logs and messages.
        """
        return self.toConfig()

    @property
    def isIPv6(self) -> bool:
        """
        Whether the upstream's address is IPv6.
        """
        return ":" in self.host


SYSTEM = Upstream("udp", "", 0, None, isSystem=True)
"""
What the config word C{system} decodes to; L{expandUpstreams} replaces it.
"""


def _isIP(text: str) -> bool:
    """
    Whether C{text} is an IPv4 or IPv6 address.
    """
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _bracketed(host: str) -> str:
    """
    A host as written in an upstream string: IPv6 in brackets.
    """
    return f"[{host}]" if ":" in host else host


def _splitAddress(value: str, rest: str) -> tuple[str, str | None, list[str]]:
    """
    Split what follows the transport into host, port text (if any) and the
    C{key=value} options, checking the host.
    """
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise InvalidValue(f"{value!r}: '[' without a closing ']'; write IPv6 addresses as [ADDRESS]")
        host, tail = rest[1:close], rest[close + 1 :]
        if tail and not tail.startswith(":"):
            raise InvalidValue(f"{value!r}: unexpected {tail!r} after ']'; expected :PORT or nothing")
        parts = tail[1:].split(":") if tail else []
        portText = parts.pop(0) if parts and "=" not in parts[0] else None
        for part in parts:
            if "=" not in part:
                raise InvalidValue(f"{value!r}: unexpected {part!r}; expected HOST[:PORT] then key=value options")
        params = parts
        if host and not _isIPv6(host):
            raise InvalidValue(f"{value!r}: {host!r} in brackets is not an IPv6 address (brackets are for IPv6 only)")
    else:
        parts = rest.split(":")
        params = []
        while parts and "=" in parts[-1]:
            params.insert(0, parts.pop())
        if len(parts) > 2 or (len(parts) == 2 and _isIPv6(":".join(parts))):
            address = ":".join(parts)
            if _isIPv6(address.split("%")[0]):
                raise InvalidValue(
                    f"{value!r}: write IPv6 addresses in brackets, {value.partition(':')[0]}:[{address}] "
                    f"or with a port {value.partition(':')[0]}:[{address}]:PORT"
                )
            raise InvalidValue(f"{value!r}: expected HOST[:PORT] after the transport, got {rest!r}")
        host = parts[0] if parts else ""
        portText = parts[1] if len(parts) == 2 else None
        for part in params:
            if "=" not in part:
                raise InvalidValue(f"{value!r}: unexpected {part!r}; expected key=value")
    if not host:
        raise InvalidValue(f"{value!r}: missing host; expected an IP address after the transport")
    if "%" in host:
        raise InvalidValue(f"{value!r}: IPv6 zone ids ({host[host.index('%'):]}) are not supported")
    try:
        canonical = str(ipaddress.ip_address(host))
    except ValueError:
        raise InvalidValue(
            f"{value!r}: host {host!r} is not an IP address; upstreams are given by address "
            "(IPv4, or IPv6 in brackets), since netd does not look up its resolvers' names"
        ) from None
    return canonical, portText, params


def _isIPv6(text: str) -> bool:
    """
    Whether C{text} is an IPv6 address.
    """
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
    except ValueError:
        return False


def _serverName(value: str, transport: str, params: list[str]) -> str | None:
    """
    Check the C{key=value} options of an upstream string: C{name=} for tls
    (required there), nothing for the others.
    """
    options: dict[str, str] = {}
    for param in params:
        key, _, text = param.partition("=")
        if transport != "tls":
            raise InvalidValue(f"{value!r}: {transport} upstreams take no options ({param!r}); name= is only for tls")
        if key != "name":
            raise InvalidValue(f"{value!r}: unknown option {key!r}{closeMatch(key, ['name'])}; tls takes only name=")
        if key in options:
            raise InvalidValue(f"{value!r}: name= given twice")
        if not text:
            raise InvalidValue(f"{value!r}: name= is empty; expected the name on the upstream's certificate")
        options[key] = text
    if transport == "tls" and "name" not in options:
        raise InvalidValue(
            f"{value!r}: tls upstreams need the name their certificate is checked against: "
            "tls:HOST[:PORT]:name=SERVERNAME"
        )
    return options.get("name")


def systemUpstreams(path: str = "/etc/resolv.conf") -> list[Upstream]:
    """
    The C{nameserver} lines of a resolv.conf file as UDP upstreams on port 53,
    in file order, duplicates and unreadable lines skipped, IPv6 zone ids
    (C{%eth0}) dropped.  An unreadable file or one without nameservers gives
    an empty list (this does not fall back to 127.0.0.1 as libc does, which
    could be netd itself).
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found: list[Upstream] = []
    for line in lines:
        words = re.split(r"[#;]", line, maxsplit=1)[0].split()
        if len(words) < 2 or words[0] != "nameserver":
            continue
        try:
            address = ipaddress.ip_address(words[1].partition("%")[0])
        except ValueError:
            continue
        upstream = Upstream("udp", str(address), 53)
        if upstream not in found:
            found.append(upstream)
    return found


def expandUpstreams(
    upstreams: list[Upstream] | tuple[Upstream, ...], resolvConf: str = "/etc/resolv.conf"
) -> list[Upstream]:
    """
    The configured upstreams with the C{system} placeholder replaced by the
    nameservers of C{resolvConf} (L{systemUpstreams}), in order, each upstream
    once.  The result may be empty (C{system} alone and no nameservers).
    """
    expanded: list[Upstream] = []
    for upstream in upstreams:
        for one in systemUpstreams(resolvConf) if upstream.isSystem else [upstream]:
            if one not in expanded:
                expanded.append(one)
    return expanded


class UpstreamFailure(Exception):
    """
    No upstream gave an answer in time; the message says what was tried and
    what happened to each attempt.

    @ivar tried: one line per attempt, C{UPSTREAM: what happened}.
    """

    def __init__(self, message: str, tried: list[str] | None = None) -> None:
        self.tried = list(tried or [])
        if self.tried:
            message += "; tried: " + ", ".join(self.tried)
        super().__init__(message)


class _AttemptError(Exception):
    """
    One attempt failed at once (no connection, connection lost, send error).

    @ivar retryable: whether another attempt at the same upstream may work
        (a connection lost mid-query, perhaps closed by the upstream as idle
        just as the query went out: the next attempt opens a new one).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class _AttemptTimeout(Exception):
    """
    One attempt got no answer within its timeout.
    """


@attrs.define(eq=False)
class _UpstreamState:
    """
    What the resolver knows about one upstream's health.
    """

    upstream: Upstream
    up: bool = True
    fails: int = 0
    lastError: str | None = None
    probe: Deferred[bytes] | None = None


@attrs.define(eq=False)
class _Pending:
    """
    One query sent and not yet answered, on a UDP socket or a stream connection.

    @ivar address: for UDP, the (host, port) the answer must come from.
    """

    deferred: Deferred[bytes]
    question: Question
    address: tuple[str, int] | None = None


class _Outstanding:
    """
    The (ID, question) of every query out to an upstream, for loop detection.
    """

    def __init__(self) -> None:
        self.keys: Counter[tuple[int, bytes, int, int]] = Counter()

    def add(self, queryID: int, question: Question) -> None:
        """
        One more query out.
        """
        self.keys[(queryID, question.key, question.qtype, question.qclass)] += 1

    def remove(self, queryID: int, question: Question) -> None:
        """
        A query answered, timed out or abandoned.
        """
        key = (queryID, question.key, question.qtype, question.qclass)
        self.keys[key] -= 1
        if self.keys[key] <= 0:
            del self.keys[key]


class _UDPSocket(DatagramProtocol):
    """
    One socket of the UDP pool, with the queries outstanding on it by ID.
    """

    noisy = False

    def __init__(self, pool: _UDPPool) -> None:
        self.pool = pool
        self.pending: dict[int, _Pending] = {}

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """
        Hand the datagram to the pool to match it.
        """
        self.pool.datagramReceived(self, datagram, addr)


class _UDPPool:
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

    def _socketsFor(self, upstream: Upstream) -> list[_UDPSocket]:
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
            return fail(_AttemptError(f"cannot open a UDP socket: {e}"))
        rng = self.resolver.random
        sock = rng.choice(sockets)
        queryID = _freshID(rng, sock.pending)
        outstanding = self.resolver.outstanding

        def cancel(d: Deferred[bytes]) -> None:
            if sock.pending.get(queryID) is entry:
                del sock.pending[queryID]
                outstanding.remove(queryID, question)

        entry = _Pending(Deferred(cancel), question, (upstream.host, upstream.port))
        try:
            address = (upstream.host, upstream.port)
            sock.transport.write(queryID.to_bytes(2, "big") + query[2:], address)  # type: ignore[union-attr]
        except OSError as e:
            return fail(_AttemptError(f"send failed: {e}"))
        sock.pending[queryID] = entry
        outstanding.add(queryID, question)
        return entry.deferred

    def datagramReceived(self, sock: _UDPSocket, datagram: bytes, addr: Any) -> None:
        """
        Accept an answer only from the address queried, with an ID outstanding
        on this socket and the question asked; count and drop anything else.
        """
        queryID = int.from_bytes(datagram[:2], "big")
        entry = sock.pending.get(queryID) if len(datagram) >= HEADER_SIZE else None
        if (
            entry is None
            or entry.address is None
            or not _sameAddress(addr, entry.address)
            or not answerMatches(datagram, queryID, entry.question)
        ):
            self.resolver.counters["upstream_spoofed_dropped"] += 1
            self.resolver.log.debug(
                "dropped a UDP datagram from {peer} that answers no outstanding query", peer=f"{addr[0]}:{addr[1]}"
            )
            return
        del sock.pending[queryID]
        self.resolver.outstanding.remove(queryID, entry.question)
        entry.deferred.callback(datagram)

    def close(self) -> list[Deferred[Any]]:
        """
        Fail what is outstanding and stop listening; the Deferreds fire when
        the ports are closed.
        """
        for sockets in self.sockets.values():
            for sock in sockets:
                pending, sock.pending = sock.pending, {}
                for queryID, entry in pending.items():
                    self.resolver.outstanding.remove(queryID, entry.question)
                    entry.deferred.errback(_AttemptError("the resolver stopped"))
        stopping = [maybeDeferred(port.stopListening) for port in self.ports]
        self.sockets.clear()
        self.ports.clear()
        return stopping


def _unwrapTLS(protocol: Any) -> FramedProtocol:
    """
    The framed protocol inside a TLS connection.
    """
    assert isinstance(protocol, TLSMemoryBIOProtocol)
    return cast(FramedProtocol, protocol.wrappedProtocol)


def _freshID(rng: random.Random, pending: dict[int, _Pending]) -> int:
    """
    A random 16-bit ID not in C{pending}.
    """
    while True:
        queryID = rng.getrandbits(16)
        if queryID not in pending:
            return queryID


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


@implementer(IFrameReceiver)
class _StreamConnection:
    """
    One TCP or TLS connection to an upstream, with its queries outstanding by ID.

    @ivar open: whether new queries may be sent on it.
    @ivar lost: fires when the connection is gone.
    """

    connection: IFrameConnection

    def __init__(self, client: _StreamUpstream) -> None:
        self.client = client
        self.pending: dict[int, _Pending] = {}
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
        resolver = self.client.resolver
        queryID = _freshID(resolver.random, self.pending)

        def cancel(d: Deferred[bytes]) -> None:
            if self.pending.get(queryID) is entry:
                del self.pending[queryID]
                resolver.outstanding.remove(queryID, question)
                self._idleCheck()

        entry = _Pending(Deferred(cancel), question)
        self.pending[queryID] = entry
        resolver.outstanding.add(queryID, question)
        if self.idleCall is not None:
            self.idleCall.cancel()
            self.idleCall = None
        self.connection.sendFrame(queryID.to_bytes(2, "big") + query[2:])
        return entry.deferred

    def frameReceived(self, frame: bytes) -> None:
        """
        Match an answer to its query by ID and question; drop and count anything else.
        """
        queryID = int.from_bytes(frame[:2], "big")
        entry = self.pending.get(queryID) if len(frame) >= HEADER_SIZE else None
        resolver = self.client.resolver
        if entry is None or not answerMatches(frame, queryID, entry.question):
            resolver.counters["upstream_spoofed_dropped"] += 1
            resolver.log.debug(
                "dropped a message from {upstream} that answers no outstanding query", upstream=self.client.upstream
            )
            return
        del self.pending[queryID]
        resolver.outstanding.remove(queryID, entry.question)
        self._idleCheck()
        entry.deferred.callback(frame)

    def connectionLost(self, reason: Failure) -> None:
        """
        Fail what was outstanding (the resolver moves on to the next upstream).
        """
        self.open = False
        if self.idleCall is not None:
            self.idleCall.cancel()
            self.idleCall = None
        self.client.connectionGone(self)
        resolver = self.client.resolver
        tlsWhy = describeTLSFailure(reason)
        tlsFailed = tlsWhy is not None
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
        pending, self.pending = self.pending, {}
        for queryID, entry in pending.items():
            resolver.outstanding.remove(queryID, entry.question)
            entry.deferred.errback(_AttemptError(f"connection lost: {why}", retryable=not tlsFailed))
        self.lost.callback(None)

    def close(self) -> None:
        """
        Close once written; no new queries go on this connection.
        """
        self.open = False
        if self.idleCall is not None:
            self.idleCall.cancel()
            self.idleCall = None
        self.client.connectionGone(self)
        self.connection.loseConnection()

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


@implementer(IStreamHandler)
class _StreamUpstream:
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
        Connected: the waiting queries go out.
        """
        self.connecting = None
        connection = protocol.receiver
        assert isinstance(connection, _StreamConnection)
        waiters, self.waiters = self.waiters, []
        if not connection.open:
            for waiter in waiters:
                waiter.errback(_AttemptError("connection lost as it opened"))
            return
        self.connection = connection
        for waiter in waiters:
            waiter.callback(connection)
        connection._idleCheck()

    def _connectFailed(self, reason: Failure) -> None:
        """
        Could not connect: the waiting queries fail.
        """
        self.connecting = None
        waiters, self.waiters = self.waiters, []
        if reason.check(CancelledError) and not waiters:
            return
        for waiter in waiters:
            waiter.errback(_AttemptError(f"cannot connect: {reason.getErrorMessage()}"))

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


class UpstreamResolver(Service):
    """
    Forwards queries to the configured upstreams (see the module docstring for how).

    @ivar counters: the service's counters (the C{upstream_*} names).
    @ivar random: where query IDs and sockets are drawn from (a
        L{random.SystemRandom}; tests may put a scripted one here).
    """

    def __init__(
        self,
        reactor: Any,
        upstreams: list[Upstream],
        *,
        timeout: float,
        deadline: float,
        maxFails: int,
        healthInterval: float,
        caBundle: str | None,
        counters: Counters,
        log: Logger,
        udpSockets: int = 8,
        idleTimeout: float = 10.0,
    ) -> None:
        """
        @param upstreams: real upstreams (L{expandUpstreams} replaces C{system}).
        @param timeout: seconds each attempt waits for its answer.
        @param deadline: seconds a whole resolve may take.
        @param maxFails: consecutive failures that mark an upstream down; 0 never does.
        @param healthInterval: seconds between probes of down upstreams; 0 turns probing off.
        @param caBundle: a PEM file of the CA certificates TLS upstreams are
            checked against; L{None} for the system's.
        @param udpSockets: UDP sockets per local interface.
        @param idleTimeout: seconds an unused TCP/TLS connection stays open.
        @raise ValueError: if C{upstreams} holds the C{system} placeholder, or
            C{caBundle} cannot be read or holds no certificate.
        """
        if any(u.isSystem for u in upstreams):
            raise ValueError("expand the 'system' upstream with expandUpstreams() first")
        self.reactor = reactor
        self.timeout = timeout
        self.deadline = deadline
        self.maxFails = maxFails
        self.healthInterval = healthInterval
        self.counters = counters
        self.log = log
        self.idleTimeout = idleTimeout
        self.random: random.Random = random.SystemRandom()
        self.outstanding = _Outstanding()
        self._states = [_UpstreamState(u) for u in upstreams]
        self._udp = _UDPPool(self, udpSockets)
        self._streams: dict[Upstream, _StreamUpstream] = {}
        self._trustRoot: Any = loadTrustRoot(caBundle)  # an IOpenSSLTrustRoot (not exported publicly)
        self._resolving: set[Deferred[bytes]] = set()
        self._prober: LoopingCall | None = None
        self._stopped = False

    def trustRoot(self) -> Any:
        """
        What TLS upstreams' certificates are checked against (see L{netd.tls.loadTrustRoot}).
        """
        return self._trustRoot

    def startService(self) -> None:
        """
        Start probing down upstreams.
        """
        super().startService()
        self._stopped = False
        if self.healthInterval > 0:
            self._prober = LoopingCall(self._probe)
            self._prober.clock = self.reactor
            self._prober.start(self.healthInterval, now=False)

    def stopService(self) -> Deferred[None]:
        """
        Stop probing, fail every resolve in progress with L{UpstreamFailure},
        close the sockets and connections; the Deferred fires when they are closed.
        """
        super().stopService()
        self._stopped = True
        if self._prober is not None and self._prober.running:
            self._prober.stop()
        self._prober = None
        for d in list(self._resolving):
            d.cancel()
        for state in self._states:
            if state.probe is not None:
                state.probe.cancel()
        closing = self._udp.close()
        for stream in self._streams.values():
            closing.extend(stream.close())
        self._streams.clear()
        return DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)

    def resolve(self, query: bytes, question: Question) -> Deferred[bytes]:
        """
        Forward a client's query; the Deferred fires with the answer (with the
        client's ID) or fails with L{UpstreamFailure}.

        @param query: the client's query, as received.
        @param question: its question (as L{wire.parseQuestion} read it).
        """
        if self._stopped:
            return fail(UpstreamFailure("the upstream resolver is stopped"))
        d = Deferred.fromCoroutine(self._resolve(query, question))
        if not d.called:
            self._resolving.add(d)
            d.addBoth(self._resolved, d)
        return d

    def _resolved(self, result: Any, d: Deferred[bytes]) -> Any:
        """
        Forget a finished resolve.
        """
        self._resolving.discard(d)
        return result

    def isLooped(self, query: bytes, question: Question) -> bool:
        """
        Whether a query received by this service is one of its own upstream
        queries come back (same ID and question as one outstanding): a
        forwarding loop, which the handler must not forward again.
        """
        if len(query) < 2:
            return False
        key = (int.from_bytes(query[:2], "big"), question.key, question.qtype, question.qclass)
        if key in self.outstanding.keys:
            self.counters["upstream_loops_detected"] += 1
            return True
        return False

    def health(self) -> list[dict[str, Any]]:
        """
        Each upstream's state, in config order: C{upstream} (its config
        string), C{up}, C{consecutive_failures}, C{last_error} (or L{None}).
        """
        return [
            {
                "upstream": state.upstream.toConfig(),
                "up": state.up,
                "consecutive_failures": state.fails,
                "last_error": state.lastError,
            }
            for state in self._states
        ]

    async def _resolve(self, query: bytes, question: Question) -> bytes:
        """
        Try the upstreams in turn until one answers or the deadline passes.
        """
        clientID = query[:2]
        deadlineAt = self.reactor.seconds() + self.deadline
        candidates = [s for s in self._states if s.up] or list(self._states)
        if not candidates:
            raise UpstreamFailure("no upstreams are configured")
        tried: list[str] = []
        lastRefusal: bytes | None = None
        retriedErrors: set[Upstream] = set()
        while candidates:
            again = []
            for state in candidates:
                remaining = deadlineAt - self.reactor.seconds()
                if remaining <= 0:
                    break
                try:
                    answer = await self._attempt(state, query, question, deadlineAt)
                except _AttemptTimeout as e:
                    tried.append(f"{state.upstream} ({e})")
                    again.append(state)
                    continue
                except _AttemptError as e:
                    tried.append(f"{state.upstream} ({e})")
                    if e.retryable and state.upstream not in retriedErrors:
                        retriedErrors.add(state.upstream)
                        again.append(state)
                    continue
                except CancelledError:
                    raise UpstreamFailure(
                        "abandoned (the resolver stopped or the query was cancelled)", tried
                    ) from None
                rcode = answer[3] & RCODE_MASK
                if rcode in _RCODE_NAMES:
                    self.counters["upstream_error_answers"] += 1
                    tried.append(f"{state.upstream} (answered {_RCODE_NAMES[rcode]})")
                    state.lastError = f"answered {_RCODE_NAMES[rcode]}"
                    lastRefusal = answer
                    continue
                return clientID + answer[2:]
            if lastRefusal is not None or deadlineAt - self.reactor.seconds() <= 0:
                break
            candidates = again
        if lastRefusal is not None:
            return clientID + lastRefusal[2:]
        if deadlineAt - self.reactor.seconds() <= 0:
            raise UpstreamFailure(f"no upstream answered within the {self.deadline:g}s deadline", tried)
        raise UpstreamFailure("every upstream failed", tried)

    async def _attempt(self, state: _UpstreamState, query: bytes, question: Question, deadlineAt: float) -> bytes:
        """
        One attempt at one upstream (with a TCP retry of a truncated UDP
        answer), keeping its health and the counters.

        @raise _AttemptTimeout: no answer in time.
        @raise _AttemptError: the attempt failed otherwise.
        """
        upstream = state.upstream
        started = self.reactor.seconds()
        try:
            self.counters["upstream_queries"] += 1
            answer = await self._exchange(upstream, query, question, deadlineAt)
            if upstream.transport == "udp" and int.from_bytes(answer[2:4], "big") & FLAG_TC:
                self.counters["upstream_truncated"] += 1
                self.counters["upstream_queries"] += 1
                answer = await self._exchange(attrs.evolve(upstream, transport="tcp"), query, question, deadlineAt)
        except defer.TimeoutError:
            self.counters["upstream_timeouts"] += 1
            reason = f"timed out after {self.reactor.seconds() - started:g}s"
            self._failed(state, reason)
            raise _AttemptTimeout(reason) from None
        except _AttemptError as e:
            self.counters["upstream_failures"] += 1
            self._failed(state, str(e))
            raise
        self.counters["upstream_answers"] += 1
        self.counters["upstream_latency_ms_total"] += round((self.reactor.seconds() - started) * 1000)
        self.counters["upstream_latency_count"] += 1
        self._succeeded(state)
        return answer

    def _exchange(self, upstream: Upstream, query: bytes, question: Question, deadlineAt: float) -> Deferred[bytes]:
        """
        Send a query over the upstream's transport; the Deferred fails with
        L{defer.TimeoutError} after C{timeout} seconds or at the deadline, whichever is first.
        """
        if upstream.transport == "udp":
            d = self._udp.query(upstream, query, question)
        else:
            d = self._stream(upstream).query(query, question)
        return d.addTimeout(max(0.0, min(self.timeout, deadlineAt - self.reactor.seconds())), self.reactor)

    def _stream(self, upstream: Upstream) -> _StreamUpstream:
        """
        The connection keeper of a TCP or TLS upstream.
        """
        stream = self._streams.get(upstream)
        if stream is None:
            stream = self._streams[upstream] = _StreamUpstream(self, upstream)
        return stream

    def _failed(self, state: _UpstreamState, reason: str) -> None:
        """
        Count a consecutive failure; mark the upstream down at C{maxFails}.
        """
        state.fails += 1
        state.lastError = reason
        if state.up and self.maxFails > 0 and state.fails >= self.maxFails:
            state.up = False
            self.counters["upstream_marked_down"] += 1
            self.log.warn(
                "upstream {upstream} marked down after {fails} consecutive failures (last: {reason})",
                upstream=state.upstream,
                fails=state.fails,
                reason=reason,
            )

    def _succeeded(self, state: _UpstreamState) -> None:
        """
        The upstream answered: it is reachable.
        """
        state.fails = 0
        if not state.up:
            state.up = True
            self.log.info("upstream {upstream} is up again", upstream=state.upstream)

    def _probe(self) -> None:
        """
        Send C{. IN NS} to each down upstream not already being probed.
        """
        for state in self._states:
            if state.up or state.probe is not None:
                continue
            self.counters["upstream_probes"] += 1
            probe = self._exchange(state.upstream, _PROBE_QUERY, _PROBE_QUESTION, self.reactor.seconds() + self.timeout)
            state.probe = probe
            probe.addCallbacks(self._probeAnswered, self._probeFailed, callbackArgs=(state,), errbackArgs=(state,))

    def _probeAnswered(self, answer: bytes, state: _UpstreamState) -> None:
        """
        A well-formed answer (any rcode): the upstream is up.
        """
        state.probe = None
        self._succeeded(state)

    def _probeFailed(self, reason: Failure, state: _UpstreamState) -> None:
        """
        No answer: still down.
        """
        state.probe = None
        if reason.check(defer.TimeoutError):
            state.lastError = f"health probe timed out after {self.timeout:g}s"
        elif reason.check(CancelledError):
            return
        else:
            state.lastError = f"health probe failed: {reason.getErrorMessage()}"
