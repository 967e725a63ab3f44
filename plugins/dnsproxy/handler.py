"""
The query path of the DNS proxy, shared by UDP and TCP (and DNS over TLS, which
the core puts in front of TCP).

A query is answered, in this order, by: a refusal (access control, loops), the
static records, the cache (wire bytes with ID and TTLs patched, no parsing), or
the upstreams.  Identical queries in flight share one upstream query, which also
keeps a forwarding loop from turning into a storm.
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.names import dns
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.interfaces import (
    IDatagramHandler,
    IDatagramSender,
    IFrameConnection,
    IFrameReceiver,
    IReportsStatus,
    IStreamHandler,
)
from netd.metrics import Counters

from .cache import AnswerCache, CacheKey, cacheKey
from .records import StaticRecords, staticAnswer
from .resolver import UpstreamFailure, UpstreamResolver
from .wire import (
    CLASS_IN,
    FLAG_CD,
    FLAG_QR,
    FLAG_RD,
    RCODE_FORMERR,
    RCODE_NOTIMP,
    RCODE_REFUSED,
    RCODE_SERVFAIL,
    AnswerInfo,
    MalformedQuery,
    Query,
    WireError,
    addAdditionalCount,
    decodeName,
    encodeName,
    inspectAnswer,
    makeHeaderError,
    makeResponse,
    optRecord,
    parseQuery,
    patchAnswer,
    truncate,
)

RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
_RCODE_COUNTERS = {rcode: f"rcode_{name}" for rcode, name in RCODE_NAMES.items()}
_QTYPE_COUNTERS = {qtype: f"qtype_{name}" for qtype, name in dns.QUERY_TYPES.items()}
"""
Counter names made once, not per query.
"""
MAX_REMEMBERED_PEERS = 4096
"""
How many client addresses the access-control verdicts are remembered for.
"""

Answer = bytes | Deferred[bytes] | None
"""
What the query path gives: an answer now (cache, static, errors), later (the
upstreams), or none (a message to drop).
"""


class AccessList:
    """
    The C{allow} networks, with each client address's verdict remembered so that
    the check costs a dict lookup per query.
    """

    def __init__(self, networks: tuple[str, ...]) -> None:
        self.networks = [ipaddress.ip_network(n) for n in networks]
        self._verdicts: dict[str, bool] = {}

    def allows(self, host: str) -> bool:
        """
        Whether a client address may query.
        """
        verdict = self._verdicts.get(host)
        if verdict is None:
            try:
                address = ipaddress.ip_address(host.split("%", 1)[0])
            except ValueError:
                verdict = False
            else:
                if address.version == 6 and address.ipv4_mapped is not None:
                    address = address.ipv4_mapped
                verdict = any(address in network for network in self.networks)
            if len(self._verdicts) >= MAX_REMEMBERED_PEERS:
                self._verdicts.clear()
            self._verdicts[host] = verdict
        return verdict


@implementer(IStreamHandler, IDatagramHandler, IReportsStatus)
class DNSProxy(Service):
    """
    One dns-proxy service.
    """

    def __init__(
        self,
        *,
        reactor: Any,
        records: StaticRecords,
        cache: AnswerCache,
        resolver: UpstreamResolver,
        access: AccessList,
        counters: Counters,
        log: Logger,
        logQueries: bool,
        udpSize: int,
    ) -> None:
        self.reactor = reactor
        self.records = records
        self.cache = cache
        self.resolver = resolver
        self.access = access
        self.counters = counters
        counters.labelCounters("qtype_", family="dns_queries", label="qtype", help="DNS queries received, by query type.")
        counters.labelCounters("rcode_", family="dns_answers", label="rcode", help="DNS answers sent, by response code.")
        self.log = log
        self.logQueries = logQueries
        self.udpSize = udpSize
        self.inflight: dict[tuple[CacheKey, bool], Deferred[tuple[bytes, AnswerInfo]]] = {}
        self.loopProbe = encodeName(f"{secrets.token_hex(8)}.netd-loop-check")

    def startService(self) -> None:
        """
        Start the upstreams, and send the loop probe through them: if it comes
        back to this service, an upstream forwards to us.
        """
        Service.startService(self)
        self.resolver.startService()
        probe = dns.Message(id=secrets.randbelow(65536), recDes=True)
        probe.queries = [dns.Query(decodeName(self.loopProbe), dns.HINFO, dns.IN)]
        query = parseQuery(probe.toStr())
        self.resolver.resolve(probe.toStr(), query.question).addErrback(lambda _: None)

    def status(self) -> dict[str, Any]:
        """
        What C{GET /services} shows: each upstream's health (see
        L{UpstreamResolver.health}) and how many answers are cached.
        """
        return {"upstreams": self.resolver.health(), "cache_entries": len(self.cache)}

    def stopService(self) -> Deferred[None] | None:
        """
        Stop the upstreams; queries still waiting on them get SERVFAIL.
        """
        Service.stopService(self)
        return self.resolver.stopService()

    # The transports.

    def datagramReceived(self, datagram: bytes, peer: Any, sender: IDatagramSender) -> None:
        """
        Answer a query that came over UDP; answers too big for the client are
        sent truncated (TC set), so that it retries over TCP.
        """
        self.counters["queries_udp"] += 1
        started = self.reactor.seconds() if self.logQueries else 0.0
        answer = self.answer(datagram, peer[0], "udp", started)
        if answer is None:
            return
        if isinstance(answer, bytes):
            sender.sendDatagram(self._fitUDP(datagram, answer), peer)
        else:
            answer.addCallback(lambda a: sender.sendDatagram(self._fitUDP(datagram, a), peer))

    def _fitUDP(self, datagram: bytes, answer: bytes) -> bytes:
        """
        The answer, or its truncated form if it exceeds what the client accepts.
        """
        if len(answer) <= 512:
            return answer
        query = parseQuery(datagram)
        if len(answer) <= query.maxUDPSize():
            return answer
        self.counters["answers_truncated"] += 1
        return truncate(answer, query, udpSize=self.udpSize)

    def newConnection(self) -> DNSStreamReceiver:
        """
        A receiver for a DNS-over-TCP (or TLS) connection.
        """
        return DNSStreamReceiver(self)

    # The query path.

    def answer(self, data: bytes, host: str, transport: str, started: float = 0.0) -> Answer:
        """
        The answer to one query message, as bytes now, a Deferred, or L{None} to drop it.
        """
        try:
            query = parseQuery(data)
        except MalformedQuery as e:
            if e.flags & FLAG_QR:
                self.counters["dropped_responses"] += 1
                return None
            self.counters["queries_malformed"] += 1
            return self._done(makeHeaderError(e.id, e.flags, RCODE_FORMERR), None, host, transport, "formerr", started)
        except WireError:
            self.counters["dropped_unreadable"] += 1
            return None
        if query.flags & FLAG_QR:
            self.counters["dropped_responses"] += 1
            return None
        qtype = query.question.qtype
        self.counters[_QTYPE_COUNTERS.get(qtype) or f"qtype_{qtype}"] += 1
        if not self.access.allows(host):
            return self._done(makeResponse(query, RCODE_REFUSED, udpSize=self.udpSize), query, host, transport, "acl", started)
        if query.opcode != 0:
            return self._done(makeResponse(query, RCODE_NOTIMP, udpSize=self.udpSize), query, host, transport, "notimp", started)
        if query.question.key == self.loopProbe:
            return self._loopDetected(query, host, transport, started)
        if self.records and query.question.qclass == CLASS_IN:
            found = self.records.find(query.question.key)
            if found is not None:
                self.counters["static_answers"] += 1
                return self._done(self._static(query, found), query, host, transport, "static", started)
        key = cacheKey(query)
        cached = self.cache.lookup(key, query)
        if cached is not None:
            self.counters["cache_hits"] += 1
            return self._done(cached, query, host, transport, "cache", started)
        self.counters["cache_misses"] += 1
        if self.resolver.isLooped(data, query.question):
            return self._loopDetected(query, host, transport, started)
        return self._forward(key, data, query).addCallback(self._done, query, host, transport, "upstream", started)

    def _forward(self, key: CacheKey, data: bytes, query: Query) -> Deferred[bytes]:
        """
        Ask the upstreams, sharing the upstream query with identical ones in flight.
        """
        # The upstream's answer carries an OPT record exactly when the query
        # that went upstream had one, so only queries alike in that share it.
        flight = (key, query.edns is not None)
        shared = self.inflight.get(flight)
        if shared is None:
            shared = self.resolver.resolve(data, query.question).addCallback(self._received, key)
            shared.addBoth(self._landed, flight)
            self.inflight[flight] = shared
        else:
            self.counters["queries_coalesced"] += 1
        result: Deferred[bytes] = Deferred()

        def deliver(outcome: tuple[bytes, AnswerInfo] | Failure) -> tuple[bytes, AnswerInfo] | Failure:
            if isinstance(outcome, Failure):
                if not outcome.check(UpstreamFailure):
                    self.log.failure("forwarding failed", outcome)
                self.counters["upstream_servfail"] += 1
                result.callback(makeResponse(query, RCODE_SERVFAIL, udpSize=self.udpSize))
            else:
                # The cached form, when there is one, has the TTLs clamped and
                # an OPT record exactly when this client sent one.
                answer, info = outcome
                result.callback(
                    self.cache.lookup(key, query) or patchAnswer(answer, info.ttlOffsets, info.ttls, 0, query)
                )
            return outcome

        shared.addBoth(deliver)
        return result

    def _received(self, answer: bytes, key: CacheKey) -> tuple[bytes, AnswerInfo]:
        """
        An upstream answered: cache it if it may be cached.
        """
        info = inspectAnswer(answer)
        self.cache.store(key, answer, info)
        return answer, info

    def _landed(self, outcome: object, flight: tuple[CacheKey, bool]) -> object:
        """
        The shared upstream query is over: new queries start their own.
        """
        self.inflight.pop(flight, None)
        return outcome

    def _static(self, query: Query, found: Any) -> bytes:
        """
        The answer from the static records.
        """
        message = dns.Message(
            id=query.id,
            answer=True,
            opCode=dns.OP_QUERY,
            recDes=bool(query.flags & FLAG_RD),
            recAv=True,
            checkingDisabled=bool(query.flags & FLAG_CD),
            maxSize=65535,
        )
        question = query.question
        message.queries = [dns.Query(decodeName(question.name).rstrip(".").encode(), question.qtype, question.qclass)]
        wire = staticAnswer(self.records, found, message).toStr()
        if query.edns is not None:
            wire = addAdditionalCount(wire, 1) + optRecord(query.edns.do, self.udpSize)
        return wire

    def _loopDetected(self, query: Query, host: str, transport: str, started: float) -> bytes:
        """
        Our own query came back (the loop probe, or a query we have outstanding
        upstream, same ID and question): an upstream forwards to this service.
        """
        if not self.counters["loop_detected"]:
            self.log.error(
                "forwarding loop: queries this service sends upstream come back to it (from {client}); "
                "check the upstreams",
                client=host,
            )
        self.counters["loop_detected"] += 1
        return self._done(makeResponse(query, RCODE_REFUSED, udpSize=self.udpSize), query, host, transport, "loop", started)

    def _done(self, answer: bytes, query: Query | None, host: str, transport: str, source: str, started: float) -> bytes:
        """
        Count (and, with log_queries, log) the answer on its way out.
        """
        rcode = answer[3] & 0x0F if len(answer) >= 4 else RCODE_SERVFAIL
        self.counters[_RCODE_COUNTERS.get(rcode) or f"rcode_{rcode}"] += 1
        if self.logQueries:
            self.log.info(
                "{client} {transport} {name} {qtype} -> {rcode} from {source} in {ms:.1f} ms",
                client=host,
                transport=transport,
                name=decodeName(query.question.name) if query else "?",
                qtype=dns.QUERY_TYPES.get(query.question.qtype, query.question.qtype) if query else "?",
                rcode=RCODE_NAMES.get(rcode, rcode),
                source=source,
                ms=(self.reactor.seconds() - started) * 1000,
                size=len(answer),
            )
        return answer


@implementer(IFrameReceiver)
class DNSStreamReceiver:
    """
    One DNS-over-TCP connection: each u16 frame is a query, answered as soon as
    its answer is ready (pipelined, possibly out of order, as RFC 7766 allows).
    """

    def __init__(self, proxy: DNSProxy) -> None:
        self.proxy = proxy
        self.connection: IFrameConnection | None = None
        self.host = ""

    def connectionMade(self, connection: IFrameConnection) -> None:
        """
        Remember the connection and the client's address.
        """
        self.connection = connection
        self.host = getattr(connection.getPeer(), "host", "")

    def frameReceived(self, frame: bytes) -> None:
        """
        Answer one query.
        """
        proxy = self.proxy
        proxy.counters["queries_tcp"] += 1
        started = proxy.reactor.seconds() if proxy.logQueries else 0.0
        answer = proxy.answer(frame, self.host, "tcp", started)
        if isinstance(answer, bytes):
            self._send(answer)
        elif answer is not None:
            answer.addCallback(self._send)

    def _send(self, answer: bytes) -> None:
        """
        Send an answer, unless the client has gone.
        """
        if self.connection is not None:
            self.connection.sendFrame(answer)

    def connectionLost(self, reason: Failure) -> None:
        """
        Answers still to come are dropped.
        """
        self.connection = None
