"""
The query path of the DNS proxy, shared by UDP, TCP and DNS over TLS: refusals,
scripts, static records, the cache, then the upstreams.

A cache hit for a plain query is answered from the query's bytes
(L{DNSProxy._cacheHit}), a fast twin of the whole path that a test holds to
the same answers, counters and events.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, ISSLTransport
from twisted.logger import Logger
from twisted.names import dns
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.faults.schedule import ScheduleState
from netd.interfaces import (
    EventRecorder,
    IDatagramHandler,
    IDatagramSender,
    IFrameConnection,
    IFrameReceiver,
    IHasRuntimeTables,
    IReportsStatus,
    IRuntimeTable,
    IStreamHandler,
)
from netd.metrics import Counters

from .cache import AnswerCache, CacheKey, cacheKey
from .records import NamePattern, StaticRecords, staticAnswer
from .resolver import UpstreamFailure, UpstreamResolver
from .scripts import QueryType, Script, ScriptBook, forcedAnswer, forgedAnswer
from .tables import RecordsTable, ScriptsTable
from .upstream import Upstream
from .wire import (
    CLASS_IN,
    FLAG_CD,
    FLAG_QR,
    FLAG_RD,
    HEADER_SIZE,
    MIN_UDP_SIZE,
    RCODE_BADVERS,
    RCODE_FORMERR,
    RCODE_NOTIMP,
    RCODE_REFUSED,
    RCODE_SERVFAIL,
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
    quickQuestion,
    truncate,
    upstreamQuery,
)

RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 16: "BADVERS"}
_RCODE_COUNTERS = {rcode: f"rcode_{name}" for rcode, name in RCODE_NAMES.items()}
_QTYPE_COUNTERS = {qtype: f"qtype_{name}" for qtype, name in dns.QUERY_TYPES.items()}
"""
Counter names made once, not per query.  Types without a name share
C{qtype_other}, so that a client asking every number makes one series, not
65,536.
"""
_QTYPE_OTHER = "qtype_other"
DEFAULT_MAX_INFLIGHT = 10_000
DEFAULT_MAX_INFLIGHT_PER_CLIENT = 1_000
DEFAULT_MAX_INFLIGHT_PER_CONNECTION = 100
"""
The defaults of C{max_inflight}, C{max_inflight_per_client} and
C{max_inflight_per_connection}: ten times what the benchmark keeps in flight
from its one address (dnsperf -q 100), and far more than a stub resolver or
a pipelining TCP client has outstanding.
"""
MAX_REMEMBERED_PEERS = 4096
"""
How many client addresses the access-control verdicts are remembered for.
"""


@attrs.frozen
class Spoofed:
    """
    A scripted query's answers: a forged one to send at once, then the real one.
    """

    forged: bytes
    answer: bytes | Deferred[bytes]


Answer = bytes | Deferred[bytes] | Spoofed | None
"""
What the query path gives: an answer now (cache, static, errors), later (the
upstreams, a scripted delay), after a forged one (L{Spoofed}), or none (a
message to drop).
"""

Applied = tuple[int, Script]
"""
The script entry that acted on a query, with its index in the entries.
"""

Flight = tuple[CacheKey, bool]
"""
What identical queries in flight share one upstream query by: the cache key,
and whether the query has an OPT record.
"""

Reply = Callable[[bytes], object]
"""
What a query waiting for the upstreams is answered through: a UDP client's
send (L{DNSProxy.datagramReceived}), or the callback of the Deferred that
L{DNSProxy.answer} gave.
"""

Waiter = tuple[Reply, Query, str, int, str, float, Applied | None]
"""
A query waiting for its flight to land: what it is answered through, the
query, the client's address and port, the transport, when it arrived, and the
script entry that applied to it.
"""


def renderQuery(
    host: str,
    port: int,
    query: Query | tuple[bytes, int] | None,
    transport: str,
    rcode: int | None,
    source: str,
    upstream: Upstream | None,
    applied: Applied | None,
    started: float,
    ended: float,
) -> dict[str, Any]:
    """
    The fields of a C{"query"} event, built when the event log is read; the
    client is written as the C{peer} of connection events is.

    @param query: the query; or, for a cache hit answered by
        L{DNSProxy._cacheHit}, its question's name (wire form, as sent) and
        type, which is all the event shows (not the message, which a padded
        query makes up to 64 KB); or L{None} for a query whose question could
        not be read (FORMERR).
    @param rcode: L{None} for a query dropped unanswered.
    """
    name: bytes | None = None
    qtype = 0
    if isinstance(query, tuple):
        name, qtype = query
    elif query is not None:
        name, qtype = query.question.name, query.question.qtype
    return {
        "client": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "name": decodeName(name) if name is not None else None,
        "type": QueryType(qtype).toConfig() if name is not None else None,
        "transport": transport,
        "rcode": None if rcode is None else RCODE_NAMES.get(rcode, str(rcode)),
        "source": source,
        "cache_hit": source == "cache",
        "upstream": None if upstream is None else upstream.toConfig(),
        "duration_ms": round((ended - started) * 1000, 3),
        "script": None if applied is None else {"index": applied[0], **applied[1].actions()},
    }


class AccessList:
    """
    The C{allow} networks, with each client address's verdict remembered so that
    the check costs a dict lookup per query.

    @ivar verdicts: the verdicts remembered, by client address: the cache-hit
        path reads them itself, and asks L{allows} only for an address not there.
    """

    def __init__(self, networks: tuple[str, ...]) -> None:
        self.networks = [ipaddress.ip_network(n) for n in networks]
        self.verdicts: dict[str, bool] = {}

    def allows(self, host: str) -> bool:
        """
        Whether a client address may query.
        """
        verdict = self.verdicts.get(host)
        if verdict is None:
            try:
                address = ipaddress.ip_address(host.split("%", 1)[0])
            except ValueError:
                verdict = False
            else:
                if address.version == 6 and address.ipv4_mapped is not None:
                    address = address.ipv4_mapped
                verdict = any(address in network for network in self.networks)
            if len(self.verdicts) >= MAX_REMEMBERED_PEERS:
                self.verdicts.clear()
            self.verdicts[host] = verdict
        return verdict


@implementer(IStreamHandler, IDatagramHandler, IReportsStatus, IHasRuntimeTables)
class DNSProxy(Service):
    """
    One dns-proxy service.

    @ivar hasRecords: whether L{records} has any (asked once per change, not per query).
    @ivar scripts: the scripted answers now, with their schedules.
    @ivar timed: whether queries are timed (for C{log_queries} or the event log).
    """

    def __init__(
        self,
        *,
        reactor: Any,
        records: StaticRecords,
        scripts: tuple[Script, ...],
        cache: AnswerCache,
        resolver: UpstreamResolver,
        access: AccessList,
        counters: Counters,
        log: Logger,
        logQueries: bool,
        udpSize: int,
        events: EventRecorder,
        maxInflight: int = DEFAULT_MAX_INFLIGHT,
        maxInflightPerClient: int = DEFAULT_MAX_INFLIGHT_PER_CLIENT,
        maxInflightPerConnection: int = DEFAULT_MAX_INFLIGHT_PER_CONNECTION,
    ) -> None:
        """
        @param maxInflight: the most queries waiting for the upstreams at
            once, from all clients (identical ones sharing an upstream query
            count one each).
        @param maxInflightPerClient: the most of those from one client address.
        @param maxInflightPerConnection: the most queries waiting for their
            answer on one TCP (or TLS) connection.
        """
        self.reactor = reactor
        self.records = records
        self.scripts = ScriptBook(scripts)
        self.tables: dict[str, IRuntimeTable] = {
            "records": RecordsTable(self, records),
            "scripts": ScriptsTable(self.scripts, scripts),
        }
        self.cache = cache
        self.resolver = resolver
        self.access = access
        self.counters = counters
        counters.labelCounters(
            "qtype_", family="dns_queries", label="qtype", help="DNS queries received, by query type."
        )
        counters.labelCounters(
            "rcode_", family="dns_answers", label="rcode", help="DNS answers sent, by response code."
        )
        counters.accrueFrom(lambda: {"cache_evictions": cache.evictions, "cache_too_large": cache.tooLarge})
        counters.gauge(
            "dns_cache_bytes",
            lambda: cache.bytes,
            "Bytes the DNS cache's entries are accounted for now (answers, keys, overhead).",
        )
        counters.gauge("dns_cache_entries", lambda: len(cache), "Answers in the DNS cache now.")
        self.log = log
        self.logQueries = logQueries
        self.events = events
        self.timed = logQueries or events.enabled
        self.udpSize = udpSize
        self.delayed: set[IDelayedCall] = set()
        self.inflight: dict[Flight, list[Waiter]] = {}
        self.maxInflight = maxInflight
        self.maxInflightPerClient = maxInflightPerClient
        self.maxInflightPerConnection = maxInflightPerConnection
        self.waiting = 0
        self.waitingByClient: dict[str, int] = {}
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
        Stop the upstreams (queries still waiting on them get SERVFAIL), and
        drop the answers a script is holding back.
        """
        Service.stopService(self)
        for call in self.delayed:
            call.cancel()
        self.delayed.clear()
        return self.resolver.stopService()

    def runtimeTables(self) -> Mapping[str, IRuntimeTable]:
        """
        C{records} and C{scripts} (see L{netd_plugins.dnsproxy.tables}).
        """
        return self.tables

    @property
    def records(self) -> StaticRecords:
        """
        The static records now (the control API changes them).
        """
        return self._records

    @records.setter
    def records(self, records: StaticRecords) -> None:
        """
        Answer from C{records}, noting whether there are any (L{hasRecords}).
        """
        self._records = records
        self.hasRecords = bool(records)

    def changeRecords(self, records: StaticRecords, changed: list[NamePattern]) -> None:
        """
        Answer from C{records} from now on, and drop every cached answer for
        the C{changed} names or below them, so that none from before the
        change is served.
        """
        self.records = records
        purged = self.cache.purge([pattern.key for pattern in changed])
        self.log.info(
            "static records changed at runtime: {names}; {purged} cached answers dropped",
            names=", ".join(sorted({p.toConfig() for p in changed})) or "none",
            purged=purged,
        )

    # The transports.

    def datagramReceived(self, datagram: bytes, peer: Any, sender: IDatagramSender) -> None:
        """
        Answer a query that came over UDP; answers too big for the client are
        sent truncated (TC set), so that it retries over TCP.
        """
        self.counters["queries_udp"] += 1
        started = self.reactor.seconds() if self.timed else 0.0
        host, port = peer
        hit = self._cacheHit(datagram, host, port, "udp", started)
        if isinstance(hit, bytes):
            sender.sendDatagram(hit if len(hit) <= MIN_UDP_SIZE else self._fitUDP(datagram, hit), peer)
            return
        # A query that goes upstream is answered through the send given
        # here, without a Deferred (and L{None} comes back, as for a drop).
        reply = partial(self._sendUDP, sender, datagram, peer)
        if hit is None:
            answer = self._answerParsed(datagram, host, port, "udp", started, reply)
        else:
            answer = self._cacheMissed(hit, datagram, host, port, "udp", started, reply)
        if isinstance(answer, bytes):
            sender.sendDatagram(answer if len(answer) <= MIN_UDP_SIZE else self._fitUDP(datagram, answer), peer)
        elif answer is not None:
            self.sendLater(answer, partial(self._sendUDP, sender, datagram, peer))

    def _sendUDP(self, sender: IDatagramSender, datagram: bytes, peer: Any, answer: bytes) -> None:
        """
        Send an answer that was not ready at once to a UDP client.
        """
        sender.sendDatagram(answer if len(answer) <= MIN_UDP_SIZE else self._fitUDP(datagram, answer), peer)

    def sendLater(self, answer: Deferred[bytes] | Spoofed, send: Callable[[bytes], None]) -> None:
        """
        Send an answer that is not ready yet, or a forged one and then the real one.

        @param send: a callable that sends one message to the client.
        """
        if isinstance(answer, Spoofed):
            send(answer.forged)
            if isinstance(answer.answer, bytes):
                send(answer.answer)
                return
            answer = answer.answer
        answer.addCallback(send)

    def _fitUDP(self, datagram: bytes, answer: bytes) -> bytes:
        """
        The answer, or its truncated form if it exceeds what the client accepts.
        """
        if len(answer) <= MIN_UDP_SIZE:
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

    def answer(self, data: bytes, host: str, port: int, transport: str, started: float = 0.0) -> Answer:
        """
        The answer to one query message, as bytes now, a Deferred, after a
        forged one, or L{None} to drop it.

        @param host: the client's address.
        @param port: the client's port.
        @param transport: C{udp}, C{tcp} or C{tls}.
        @param started: when the query arrived, if queries are L{timed}.
        """
        hit = self._cacheHit(data, host, port, transport, started)
        if isinstance(hit, bytes):
            return hit
        if hit is None:
            return self._answerParsed(data, host, port, transport, started)
        return self._cacheMissed(hit, data, host, port, transport, started)

    def _answerParsed(
        self, data: bytes, host: str, port: int, transport: str, started: float, reply: Reply | None = None
    ) -> Answer:
        """
        L{answer} for a query that is not a quick cache hit: parsed, and taken
        the whole way.

        @param reply: if given, a query not decided by a script that goes to
            the upstreams is answered through it, and L{None} is returned.
        """
        try:
            query = parseQuery(data)
        except MalformedQuery as e:
            if e.flags & FLAG_QR:
                self.counters["dropped_responses"] += 1
                return None
            self.counters["queries_malformed"] += 1
            return self._done(
                makeHeaderError(e.id, e.flags, RCODE_FORMERR), None, host, port, transport, "formerr", started
            )
        except WireError:
            self.counters["dropped_unreadable"] += 1
            return None
        if query.flags & FLAG_QR:
            self.counters["dropped_responses"] += 1
            return None
        if not self.access.allows(host):
            return self._done(
                makeResponse(query, RCODE_REFUSED, udpSize=self.udpSize), query, host, port, transport, "acl", started
            )
        # Counted only once the client is allowed: refused ones make no series.
        self.counters[_QTYPE_COUNTERS.get(query.question.qtype, _QTYPE_OTHER)] += 1
        if query.opcode != 0:
            return self._done(
                makeResponse(query, RCODE_NOTIMP, udpSize=self.udpSize), query, host, port, transport, "notimp", started
            )
        if query.edns is not None and query.edns.version != 0:
            # RFC 6891, 6.1.3: before anything answers (scripts, static
            # records, the cache), with an OPT record of the version we know.
            self.counters["queries_badvers"] += 1
            badvers = makeResponse(query, RCODE_BADVERS, udpSize=self.udpSize)
            return self._done(badvers, query, host, port, transport, "badvers", started, rcode=RCODE_BADVERS)
        if query.question.key == self.loopProbe:
            return self._loopDetected(query, host, port, transport, started)
        if self.scripts.scripts:
            decided = self.scripts.decide(query.question, transport)
            if decided is not None:
                return self._scripted(decided, data, query, host, port, transport, started)
        return self._lookup(data, query, host, port, transport, started, None, reply)

    def refuseOverLimit(self, data: bytes, host: str, port: int, transport: str, started: float) -> bytes | None:
        """
        REFUSED for a query on a TCP connection that has
        L{maxInflightPerConnection} queries waiting (counted); a message that
        is not a readable query is dropped or gets FORMERR as on the whole path.
        """
        try:
            query = parseQuery(data)
        except WireError:
            answer = self._answerParsed(data, host, port, transport, started)
            return answer if isinstance(answer, bytes) else None
        if query.flags & FLAG_QR:
            self.counters["dropped_responses"] += 1
            return None
        self.counters["inflight_refused_connection"] += 1
        refused = makeResponse(query, RCODE_REFUSED, udpSize=self.udpSize)
        self._record(refused, query, host, port, transport, "limit", started, None, None)
        return refused

    def _cacheHit(self, data: bytes, host: str, port: int, transport: str, started: float) -> bytes | CacheKey | None:
        """
        The answer to a plain query (L{quickQuestion}) from the cache, found
        without parsing the query, when nothing before the cache in the query
        path would act on it: the same answer, counters and event as the whole
        path gives.  For such a query not in the cache, the key it was looked
        up under (for L{_cacheMissed}); L{None} (nothing counted) for every
        other query.
        """
        quick = quickQuestion(data)
        if quick is None or self.logQueries or self.scripts.scripts:
            return None
        allowed = self.access.verdicts.get(host)
        if not (allowed or allowed is None and self.access.allows(host)):
            return None
        key, nameEnd, edns = quick
        if key[0] == self.loopProbe:
            return None
        if self.hasRecords and key[2] == CLASS_IN:
            # Only a name found in the cache is whole (see quickQuestion).
            if key not in self.cache or self.records.find(key[0]) is not None:
                return None
        cache = self.cache
        now = cache.clock.seconds()
        answer = cache.lookupMessage(key, data, nameEnd, edns, now)
        if answer is None:
            return key
        counters = self.counters
        qtype = key[1]
        counters[_QTYPE_COUNTERS.get(qtype, _QTYPE_OTHER)] += 1
        counters["cache_hits"] += 1
        rcode = answer[3] & 0x0F
        counters[_RCODE_COUNTERS.get(rcode) or f"rcode_{rcode}"] += 1
        events = self.events
        if events.enabled:
            # The cache's clock is the reactor: its time is the event's.
            question = (data[HEADER_SIZE:nameEnd], qtype)
            events.addAt(
                now, "query", renderQuery, host, port, question, transport, rcode, "cache", None, None, started, now
            )
        return answer

    def _cacheMissed(
        self,
        key: CacheKey,
        data: bytes,
        host: str,
        port: int,
        transport: str,
        started: float,
        reply: Reply | None = None,
    ) -> Answer:
        """
        L{_answerParsed} for a query that L{_cacheHit} looked up under C{key}
        in vain: everything before the cache was checked there, so the query
        is parsed (once) and goes to the upstreams.  A query whose parsed
        question is not the one C{key} was read as (bytes after the
        question's name, which L{quickQuestion} does not check) takes the
        whole path instead.
        """
        try:
            query = parseQuery(data)
        except WireError:
            query = None
        if query is None or cacheKey(query) != key:
            return self._answerParsed(data, host, port, transport, started, reply)
        self.counters[_QTYPE_COUNTERS.get(key[1], _QTYPE_OTHER)] += 1
        return self._missed(key, data, query, host, port, transport, started, None, reply)

    def _lookup(
        self,
        data: bytes,
        query: Query,
        host: str,
        port: int,
        transport: str,
        started: float,
        applied: Applied | None,
        reply: Reply | None = None,
    ) -> bytes | Deferred[bytes] | None:
        """
        The answer from the static records, the cache or the upstreams (see
        L{_forward} for C{reply}).
        """
        if self.hasRecords and query.question.qclass == CLASS_IN:
            found = self.records.find(query.question.key)
            if found is not None:
                self.counters["static_answers"] += 1
                return self._done(self._static(query, found), query, host, port, transport, "static", started, applied)
        key = cacheKey(query)
        cached = self.cache.lookup(key, query)
        if cached is not None:
            self.counters["cache_hits"] += 1
            return self._done(cached, query, host, port, transport, "cache", started, applied)
        return self._missed(key, data, query, host, port, transport, started, applied, reply)

    def _missed(
        self,
        key: CacheKey,
        data: bytes,
        query: Query,
        host: str,
        port: int,
        transport: str,
        started: float,
        applied: Applied | None,
        reply: Reply | None,
    ) -> bytes | Deferred[bytes] | None:
        """
        A query the cache does not hold (counted): refused if it is netd's own
        query come back (a forwarding loop), else forwarded (L{_forward}).
        """
        self.counters["cache_misses"] += 1
        if self.resolver.isLooped(data, query.question):
            return self._loopDetected(query, host, port, transport, started)
        return self._forward(key, data, query, host, port, transport, started, applied, reply)

    def _scripted(
        self,
        decided: tuple[int, Script, ScheduleState],
        data: bytes,
        query: Query,
        host: str,
        port: int,
        transport: str,
        started: float,
    ) -> Answer:
        """
        Carry out the script entry that decides a query: drop it, answer with
        an rcode or TC, or answer as usual, held back by C{delay}; with
        C{spoof}, a forged answer goes first.
        """
        index, script, state = decided
        applied = (index, script)
        self.counters["scripted_queries"] += 1
        if script.drop:
            self._record(None, query, host, port, transport, "script", started, applied, None)
            return None
        answer: bytes | Deferred[bytes]
        if script.rcode is not None or (script.truncate and transport == "udp"):
            answer = self._done(
                forcedAnswer(query, script, self.udpSize), query, host, port, transport, "script", started, applied
            )
        else:
            looked = self._lookup(data, query, host, port, transport, started, applied)
            assert looked is not None  # (no reply given: a Deferred for a query that goes upstream)
            answer = looked
        if script.spoof is not None:
            self.counters["spoofed_answers"] += 1
            return Spoofed(forgedAnswer(query, script.spoof, state.random, self.udpSize), answer)
        return answer

    def _forward(
        self,
        key: CacheKey,
        data: bytes,
        query: Query,
        host: str,
        port: int,
        transport: str,
        started: float,
        applied: Applied | None,
        reply: Reply | None = None,
    ) -> bytes | Deferred[bytes] | None:
        """
        Ask the upstreams, sharing the upstream query with identical ones in flight
        (L{inflight}; answered by L{_landed}, L{_failed}), through C{reply} if
        given (then L{None} is returned), else through the Deferred returned.  A query past
        L{maxInflight}, or L{maxInflightPerClient} from its address, gets REFUSED at
        once (counted): a downstream resolver takes REFUSED as "ask another server"
        where it caches SERVFAIL as the name's failure (RFC 9520).
        """
        waiting = self.waitingByClient.get(host, 0)
        if self.waiting >= self.maxInflight or waiting >= self.maxInflightPerClient:
            self.counters[
                "inflight_refused_overall" if self.waiting >= self.maxInflight else "inflight_refused_client"
            ] += 1
            refused = makeResponse(query, RCODE_REFUSED, udpSize=self.udpSize)
            return self._done(refused, query, host, port, transport, "limit", started, applied)
        self.waiting += 1
        self.waitingByClient[host] = waiting + 1
        # The upstream's answer carries an OPT record exactly when the query
        # that went upstream had one, so only queries alike in that share it.
        flight = (key, query.edns is not None)
        result: Deferred[bytes] | None = None
        if reply is None:
            result = Deferred()
            reply = result.callback
        waiter = (reply, query, host, port, transport, started, applied)
        sharing = self.inflight.get(flight)
        if sharing is None:
            self.inflight[flight] = [waiter]
            self.resolver.forwardTo(
                upstreamQuery(data, query, self.udpSize), query.question, self._landed, self._failed, flight
            )
        else:
            self.counters["queries_coalesced"] += 1
            sharing.append(waiter)
        return result

    def _answered(self, host: str) -> None:
        """
        A query that waited for the upstreams has its answer: it no longer
        counts towards the bounds on queries in flight.
        """
        self.waiting -= 1
        left = self.waitingByClient[host] - 1
        if left:
            self.waitingByClient[host] = left
        else:
            del self.waitingByClient[host]

    def _landed(self, answer: bytes, upstream: Upstream, flight: Flight) -> None:
        """
        An upstream answered a flight: cache the answer if it may be cached,
        and answer every query waiting, each with the cached form when there
        is one (TTLs clamped, an OPT record exactly when that query sent one).
        New queries start their own flight from now on.
        """
        cache = self.cache
        try:
            info = inspectAnswer(answer)
            entry = cache.store(flight[0], answer, info)
        except Exception:
            self._failed(Failure(), flight)
            return
        for deliver, query, host, port, transport, started, applied in self.inflight.pop(flight):
            if entry is not None:
                reply = cache.answerFor(entry, query)
            else:
                reply = patchAnswer(answer, info.ttlOffsets, info.ttls, 0, query)
            if applied is None:
                # (L{_done} without a script's delay: one call less per query forwarded.)
                self._record(reply, query, host, port, transport, "upstream", started, None, upstream)
                self._release(deliver, host, reply)
            else:
                self._release(
                    deliver,
                    host,
                    self._done(reply, query, host, port, transport, "upstream", started, applied, upstream),
                )

    def _failed(self, reason: Failure, flight: Flight) -> None:
        """
        No upstream answered, or their answer could not be read: every query
        waiting gets SERVFAIL.  An unreadable answer is counted and logged as
        the upstream's fault, anything but L{UpstreamFailure} as a bug.
        """
        if reason.check(WireError):
            self.counters["upstream_unreadable"] += 1
            self.log.warn("an upstream's answer could not be read: {error}", error=reason.getErrorMessage())
        elif not reason.check(UpstreamFailure):
            self.log.failure("forwarding failed", reason)
        for deliver, query, host, port, transport, started, applied in self.inflight.pop(flight):
            self.counters["upstream_servfail"] += 1
            servfail = makeResponse(query, RCODE_SERVFAIL, udpSize=self.udpSize)
            self._release(
                deliver, host, self._done(servfail, query, host, port, transport, "upstream", started, applied)
            )

    def _release(self, deliver: Reply, host: str, answer: bytes | Deferred[bytes]) -> None:
        """
        Give a waiting query its answer, now or when a script's C{delay} is
        over; from then it no longer counts as in flight.
        """
        if not isinstance(answer, bytes):
            # (Tested this way round: Deferred is an ABC's subclass, whose
            # isinstance check is a Python call.)
            answer.addCallback(self._releaseLater, deliver, host)
            return
        # (L{_answered}, inline: one call less per query forwarded.)
        self.waiting -= 1
        left = self.waitingByClient[host] - 1
        if left:
            self.waitingByClient[host] = left
        else:
            del self.waitingByClient[host]
        try:
            deliver(answer)
        except Exception:
            # (As a Deferred's callback would: the other waiters still get theirs.)
            self.log.failure("answering a query failed")

    def _releaseLater(self, answer: bytes, deliver: Reply, host: str) -> None:
        """
        A script's C{delay} is over: give the waiting query its answer.
        """
        self._answered(host)
        deliver(answer)

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

    def _loopDetected(self, query: Query, host: str, port: int, transport: str, started: float) -> bytes:
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
        loopAnswer = makeResponse(query, RCODE_REFUSED, udpSize=self.udpSize)
        self._record(loopAnswer, query, host, port, transport, "loop", started, None, None)
        return loopAnswer

    def _done(
        self,
        answer: bytes,
        query: Query | None,
        host: str,
        port: int,
        transport: str,
        source: str,
        started: float,
        applied: Applied | None = None,
        upstream: Upstream | None = None,
        rcode: int | None = None,
    ) -> bytes | Deferred[bytes]:
        """
        The answer on its way out: at once, or after the C{delay} of the
        script entry that L{applied}; recorded (L{_record}) as it goes.

        @param rcode: the answer's extended rcode, for one whose header holds
            only its lower bits (BADVERS); else read from the header.
        """
        if applied is not None and applied[1].delay:
            held: Deferred[bytes] = Deferred()

            def release() -> None:
                self.delayed.discard(call)
                self._record(answer, query, host, port, transport, source, started, applied, upstream)
                held.callback(answer)

            call = self.reactor.callLater(applied[1].delay / 1000, release)
            self.delayed.add(call)
            return held
        self._record(answer, query, host, port, transport, source, started, applied, upstream, rcode)
        return answer

    def _record(
        self,
        answer: bytes | None,
        query: Query | None,
        host: str,
        port: int,
        transport: str,
        source: str,
        started: float,
        applied: Applied | None,
        upstream: Upstream | None,
        rcode: int | None = None,
    ) -> None:
        """
        Count, log (with C{log_queries}) and record as an event an answer
        going out, or a query dropped (C{answer} L{None}).

        @param rcode: as for L{_done}.
        """
        if answer is not None:
            if rcode is None:
                rcode = answer[3] & 0x0F if len(answer) >= 4 else RCODE_SERVFAIL
            self.counters[_RCODE_COUNTERS.get(rcode) or f"rcode_{rcode}"] += 1
        if self.logQueries:
            self.log.info(
                "{client} {transport} {name} {qtype} -> {rcode} from {source} in {ms:.1f} ms",
                client=host,
                transport=transport,
                name=decodeName(query.question.name) if query else "?",
                qtype=dns.QUERY_TYPES.get(query.question.qtype, query.question.qtype) if query else "?",
                rcode="dropped" if rcode is None else RCODE_NAMES.get(rcode, rcode),
                source=source,
                ms=(self.reactor.seconds() - started) * 1000,
                size=0 if answer is None else len(answer),
            )
        if self.events.enabled:
            self.events.add(
                "query",
                renderQuery,
                host,
                port,
                query,
                transport,
                rcode,
                source,
                upstream,
                applied,
                started,
                self.reactor.seconds(),
            )


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
        self.port = 0
        self.transport = "tcp"
        self.waiting = 0

    def connectionMade(self, connection: IFrameConnection) -> None:
        """
        Remember the connection, the client's address, and whether it came
        over TLS (for the query events).
        """
        self.connection = connection
        peer = connection.getPeer()
        self.host = getattr(peer, "host", "")
        self.port = getattr(peer, "port", 0)
        if ISSLTransport.providedBy(getattr(connection, "transport", None)):
            self.transport = "tls"

    def frameReceived(self, frame: bytes) -> None:
        """
        Answer one query; once L{DNSProxy.maxInflightPerConnection} queries
        on this connection wait for their answers, the next ones get REFUSED
        (see L{DNSProxy._forward} for why REFUSED) until answers go out.
        """
        proxy = self.proxy
        proxy.counters["queries_tcp"] += 1
        started = proxy.reactor.seconds() if proxy.timed else 0.0
        if self.waiting >= proxy.maxInflightPerConnection:
            answer: Answer = proxy.refuseOverLimit(frame, self.host, self.port, self.transport, started)
        else:
            answer = proxy.answer(frame, self.host, self.port, self.transport, started)
        if isinstance(answer, bytes):
            self._send(answer)
        elif answer is not None:
            proxy.sendLater(answer, self._send)
            pending = answer.answer if isinstance(answer, Spoofed) else answer
            if isinstance(pending, Deferred) and not pending.called:
                self.waiting += 1
                pending.addBoth(self._settled)

    def _settled(self, result: object) -> object:
        """
        A query's answer has gone out (or the client has gone): one less waiting.
        """
        self.waiting -= 1
        return result

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
