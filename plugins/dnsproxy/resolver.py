"""
Forwarding to the upstreams: L{UpstreamResolver.resolve} takes a client's
query as wire bytes and returns the upstream's answer as wire bytes, with the
client's ID and question put back byte for byte (the cache keys on it).

This module decides which upstream is tried when, in which letter case (DNS
0x20), and keeps their health; L{netd_plugins.dnsproxy.transports} carries
each attempt.  The rules and the counters are in the plugin's README,
"Design notes".
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from netd.metrics import LATENCY_BUCKETS, Counters
from netd.tls.client import loadTrustRoot

from .deadlines import Deadline, Deadlines
from .transports import (
    AttemptError,
    CaseMismatch,
    Outstanding,
    PendingQuery,
    StreamUpstream,
    UDPPool,
    UpstreamBusy,
    randomCase,
)
from .upstream import Upstream
from .wire import CLASS_IN, FLAG_RD, FLAG_TC, HEADER_SIZE, RCODE_MASK, RCODE_REFUSED, RCODE_SERVFAIL, Question

if TYPE_CHECKING:
    from _typeshed import SupportsLenAndGetItem

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

_TC_BYTE = FLAG_TC >> 8
"""
TC, in the header's third byte.
"""

CASE_RECHECK = 3600.0
"""
Seconds an upstream found not to keep the letter case of questions is asked
without 0x20 before it is tried again.
"""

_T = TypeVar("_T")

_RCODE_NAMES = {RCODE_SERVFAIL: "SERVFAIL", RCODE_REFUSED: "REFUSED"}
"""
The answers that move a query on to the next upstream, by name for messages.
"""


class _RandomPool:
    """
    The kernel's random bytes, read L{SIZE} at a time; emptied in a child
    process after a fork, so that it never uses a copy of its parent's.
    """

    SIZE = 4096

    def __init__(self) -> None:
        self.pool = b""
        self.used = 0
        os.register_at_fork(after_in_child=self.drain)

    def drain(self) -> None:
        """
        Forget the bytes read.
        """
        self.pool = b""
        self.used = 0

    def take(self, count: int) -> bytes:
        """
        The next C{count} random bytes.
        """
        start = self.used
        if start + count > len(self.pool):
            self.pool = os.urandom(max(self.SIZE, count))
            start = 0
        self.used = start + count
        return self.pool[start : start + count]


_POOL = _RandomPool()


class PooledSystemRandom(random.SystemRandom):
    """
    L{random.SystemRandom} drawing from the kernel's random bytes read 4 KiB
    at a time (L{_RandomPool}): drawing a query ID and a socket took two or
    three C{getrandom} system calls per query forwarded, as many as sending
    and receiving it.  The bytes are as unpredictable.
    """

    def getrandbits(self, k: int) -> int:
        """
        An integer of C{k} random bits.
        """
        if k < 0:
            raise ValueError("number of bits must be non-negative")
        count = (k + 7) // 8
        return int.from_bytes(_POOL.take(count), "big") >> (count * 8 - k)

    def choice(self, seq: SupportsLenAndGetItem[_T]) -> _T:
        """
        An element of C{seq} at random, from one draw of 32 bits (scaled to
        the length, as Lemire's method does without its rejection step: the
        bias is below C{len(seq)} in 2**32, none for a length that is a
        power of two, as the default socket count is).  L{random.Random}'s
        rejection sampling took two draws on average for 8 sockets.
        """
        size = len(seq)
        if not size:
            raise IndexError("cannot choose from an empty sequence")
        return seq[(int.from_bytes(_POOL.take(4), "big") * size) >> 32]

    def random(self) -> float:
        """
        A float in [0, 1), of 53 random bits (as L{random.SystemRandom.random}).
        """
        return (int.from_bytes(_POOL.take(7), "big") >> 3) * 2.0**-53

    def randbytes(self, n: int) -> bytes:
        """
        C{n} random bytes.
        """
        return _POOL.take(n)


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


@attrs.define(eq=False)
class _UpstreamState:
    """
    What the resolver knows about one upstream's health, and until when it is
    asked without 0x20 (C{plainCaseUntil}, in the reactor's time; 0 for never
    found not to keep the case).
    """

    upstream: Upstream
    up: bool = True
    fails: int = 0
    lastError: str | None = None
    probe: Deferred[bytes] | None = None
    plainCaseUntil: float = 0.0
    caseLogged: bool = False


class UpstreamResolver(Service):
    """
    Forwards queries to the configured upstreams (see the module docstring for how).

    @ivar counters: the service's counters (the C{upstream_*} names).
    @ivar random: where query IDs and sockets are drawn from (a
        L{PooledSystemRandom}; tests may put a scripted one here).
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
        udpPortQueries: int = 64,
        udpPortLifetime: float = 1.0,
        randomizeCase: bool = True,
        streamConnections: int = 4,
        streamPipeline: int = 1024,
        idleTimeout: float = 10.0,
    ) -> None:
        """
        @param upstreams: real upstreams (L{expandUpstreams} replaces C{system}).
        @param timeout: seconds each attempt waits for its answer.
        @param deadline: seconds a whole resolve may take.
        @param maxFails: consecutive failures that mark an upstream down; 0 never does.
        @param healthInterval: seconds between probes of down upstreams; 0: no probes.
        @param caBundle: a PEM file of the CAs for TLS upstreams; L{None}: the system's.
        @param udpSockets: UDP sockets per local interface.
        @param udpPortQueries: queries a UDP socket sends before a new port replaces it.
        @param udpPortLifetime: seconds a UDP socket takes queries before a new port replaces it.
        @param randomizeCase: whether queries to UDP upstreams use DNS 0x20.
        @param streamConnections: connections open at most to one TCP or TLS upstream.
        @param streamPipeline: queries in flight at most on one TCP or TLS connection.
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
        self.latency = counters.histogram(
            "upstream_latency_seconds",
            LATENCY_BUCKETS,
            help="Seconds from sending a query upstream to accepting its answer (any rcode).",
        )
        self.log = log
        self.idleTimeout = idleTimeout
        self.randomizeCase = randomizeCase
        self.streamConnections = streamConnections
        self.streamPipeline = streamPipeline
        self.random: random.Random = PooledSystemRandom()
        self.outstanding = Outstanding()
        self.deadlines = Deadlines(reactor)
        self._states = [_UpstreamState(u) for u in upstreams]
        self._candidates: list[_UpstreamState] | None = None
        self._udp = UDPPool(self, udpSockets, udpPortQueries, udpPortLifetime)
        self._streams: dict[Upstream, StreamUpstream] = {}
        # An IOpenSSLTrustRoot (not exported publicly); a bad file is named at its key path.
        self._trustRoot: Any = loadTrustRoot(caBundle, key=("ca_bundle",))
        self.resolving: set[_Resolution] = set()
        self._prober: LoopingCall | None = None
        self._stopped = False

    def trustRoot(self) -> Any:
        """
        What TLS upstreams' certificates are checked against (see L{netd.tls.client.loadTrustRoot}).
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
        for resolution in list(self.resolving):
            resolution.cancel()
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
        return self.forward(query, question).addCallback(lambda answered: answered[0])

    def forward(self, query: bytes, question: Question) -> Deferred[tuple[bytes, Upstream]]:
        """
        Like L{resolve}, and say which upstream gave the answer: the Deferred
        fires with the answer and that upstream.
        """
        deferred: Deferred[tuple[bytes, Upstream]] = Deferred(lambda _: resolution.cancel())
        resolution = self.forwardTo(query, question, _fireDeferred, _failDeferred, deferred)
        return deferred

    def forwardTo(
        self,
        query: bytes,
        question: Question,
        answered: Callable[[bytes, Upstream, Any], object],
        failed: Callable[[Failure, Any], object],
        context: Any,
    ) -> _Resolution:
        """
        L{forward}, with plain calls for the outcome: C{answered(answer,
        upstream, context)} or C{failed(reason, context)}, once (perhaps
        before this returns).  The resolution returned abandons the query
        when cancelled (C{failed} is then called with L{UpstreamFailure}).
        """
        resolution = _Resolution(self, query, question, answered, failed, context)
        if self._stopped:
            resolution.outcomeFailed(Failure(UpstreamFailure("the upstream resolver is stopped")))
            return resolution
        resolution.start()
        return resolution

    def isLooped(self, query: bytes, question: Question) -> bool:
        """
        Whether a query received by this service is one of its own upstream
        queries come back (same ID and question as one outstanding): a
        forwarding loop, which the handler must not forward again.
        """
        if len(query) < 2:
            return False
        if self.outstanding.has(int.from_bytes(query[:2], "big"), question):
            self.counters["upstream_loops_detected"] += 1
            return True
        return False

    def candidates(self) -> list[_UpstreamState]:
        """
        The upstreams a query tries, in order: those that are up, or all of
        them when none is (a list made again only when one goes down or up,
        which a resolution never changes).
        """
        if self._candidates is None:
            self._candidates = [s for s in self._states if s.up] or list(self._states)
        return self._candidates

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

    def exchange(self, upstream: Upstream, query: bytes, question: Question, deadlineAt: float) -> Deferred[bytes]:
        """
        Send a query over the upstream's transport; the Deferred fails with
        L{defer.TimeoutError} after L{attemptTimeout}.
        """
        return self.send(upstream, query, question).addTimeout(self.attemptTimeout(deadlineAt), self.reactor)

    def send(
        self, upstream: Upstream, query: bytes, question: Question, name: bytes | None = None, exact: bool = False
    ) -> Deferred[bytes]:
        """
        Send a query over the upstream's transport, with no time limit: the
        Deferred fires with the answer, fails with L{AttemptError}, or waits
        until cancelled (which forgets the query).

        @param name: the question's name as it goes upstream (its case
            perhaps randomised); the client's when L{None}.
        @param exact: over UDP, accept only an answer with C{name} in the
            very same case (L{CaseMismatch} for one that differs in case alone).
        """
        if name is None:
            name = question.name
        if upstream.transport == "udp":
            return self._udp.query(upstream, query, question, name, exact)
        return self._stream(upstream).query(query, question, name)

    def attemptTimeout(self, deadlineAt: float, now: float | None = None) -> float:
        """
        How long an attempt sent now may wait: C{timeout} seconds, or until the
        deadline, whichever is first.

        @param now: the reactor's time, if the caller has just read it.
        """
        if now is None:
            now = self.reactor.seconds()
        return max(0.0, min(self.timeout, deadlineAt - now))

    def _stream(self, upstream: Upstream) -> StreamUpstream:
        """
        The connection keeper of a TCP or TLS upstream.
        """
        stream = self._streams.get(upstream)
        if stream is None:
            stream = self._streams[upstream] = StreamUpstream(self, upstream)
        return stream

    def failed(self, state: _UpstreamState, reason: str) -> None:
        """
        Count a consecutive failure; mark the upstream down at C{maxFails}.
        """
        state.fails += 1
        state.lastError = reason
        if state.up and self.maxFails > 0 and state.fails >= self.maxFails:
            state.up = False
            self._candidates = None
            self.counters["upstream_marked_down"] += 1
            self.log.warn(
                "upstream {upstream} marked down after {fails} consecutive failures (last: {reason})",
                upstream=state.upstream,
                fails=state.fails,
                reason=reason,
            )

    def busy(self, why: str) -> UpstreamBusy:
        """
        The error of a query that finds no room at its upstream (no query ID
        free, every connection full), counted: the query fails at once and
        the next upstream is tried.
        """
        self.counters["upstream_busy"] += 1
        return UpstreamBusy(f"busy: {why}")

    def caseNotKept(self, state: _UpstreamState) -> None:
        """
        An answer that cannot be forged (over TCP) had the question in another
        case than sent: ask the upstream without 0x20 for L{CASE_RECHECK}
        seconds; say so in the log the first time.
        """
        state.plainCaseUntil = self.reactor.seconds() + CASE_RECHECK
        self.counters["upstream_case_disabled"] += 1
        if not state.caseLogged:
            state.caseLogged = True
            self.log.warn(
                "upstream {upstream} does not keep the letter case of the questions it answers: its UDP queries go "
                "without case randomisation (DNS 0x20), so with less protection against forged answers, for the "
                "next {seconds:g}s at a time (randomize_case)",
                upstream=state.upstream,
                seconds=CASE_RECHECK,
            )

    def succeeded(self, state: _UpstreamState) -> None:
        """
        The upstream answered: it is reachable.
        """
        state.fails = 0
        if not state.up:
            state.up = True
            self._candidates = None
            self.log.info("upstream {upstream} is up again", upstream=state.upstream)

    def _probe(self) -> None:
        """
        Send C{. IN NS} to each down upstream not already being probed.
        """
        for state in self._states:
            if state.up or state.probe is not None:
                continue
            self.counters["upstream_probes"] += 1
            probe = self.exchange(state.upstream, _PROBE_QUERY, _PROBE_QUESTION, self.reactor.seconds() + self.timeout)
            state.probe = probe
            probe.addCallbacks(self._probeAnswered, self._probeFailed, callbackArgs=(state,), errbackArgs=(state,))

    def _probeAnswered(self, answer: bytes, state: _UpstreamState) -> None:
        """
        A well-formed answer (any rcode): the upstream is up.
        """
        state.probe = None
        self.succeeded(state)

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


def _fireDeferred(answer: bytes, upstream: Upstream, deferred: Deferred[tuple[bytes, Upstream]]) -> None:
    """
    L{UpstreamResolver.forward}'s outcome: an answer.
    """
    deferred.callback((answer, upstream))


def _failDeferred(reason: Failure, deferred: Deferred[tuple[bytes, Upstream]]) -> None:
    """
    L{UpstreamResolver.forward}'s outcome: a failure (none after the Deferred was cancelled).
    """
    if not deferred.called:
        deferred.errback(reason)


class _Resolution:
    """
    One query being forwarded, attempt after attempt, as plain callbacks (cheaper
    than a coroutine: README); each attempt's timeout is an entry in the
    resolver's L{Deadlines}.  A UDP attempt tells its outcome with plain calls
    (L{attemptAnswered}, L{attemptFailed}), a TCP or TLS one through a Deferred.

    @ivar answered: told the answer (the client's ID put back), its upstream
        and L{context}; or L{failed} the failure (L{UpstreamFailure}) and
        L{context}: once.
    @ivar attempt: the attempt waiting for its answer, if one is (what cancels
        it); L{timer} its timeout, L{timedOut} whether it is being cancelled
        for it; L{upstream} where it went.
    @ivar sentName: the question's name as the attempt sent it.
    @ivar caseCheck: whether the attempt is the TCP query that tells, by its
        answer's case, whether the upstream keeps the case.
    """

    __slots__ = (
        "resolver",
        "query",
        "question",
        "answered",
        "failed",
        "context",
        "deadlineAt",
        "candidates",
        "index",
        "again",
        "tried",
        "lastRefusal",
        "retriedErrors",
        "state",
        "started",
        "attempt",
        "upstream",
        "timer",
        "timedOut",
        "sentName",
        "caseCheck",
    )

    def __init__(
        self,
        resolver: UpstreamResolver,
        query: bytes,
        question: Question,
        answered: Callable[[bytes, Upstream, Any], object],
        failed: Callable[[Failure, Any], object],
        context: Any,
    ) -> None:
        self.resolver = resolver
        self.query = query
        self.question = question
        self.answered = answered
        self.failed = failed
        self.context = context
        self.deadlineAt = resolver.reactor.seconds() + resolver.deadline
        self.candidates: list[_UpstreamState] = []
        self.index = 0
        self.again: list[_UpstreamState] = []
        self.tried: list[str] = []
        self.lastRefusal: tuple[bytes, Upstream] | None = None
        self.retriedErrors: set[Upstream] = set()
        self.state: _UpstreamState | None = None
        self.started = 0.0
        self.attempt: Deferred[bytes] | PendingQuery | None = None
        self.upstream: Upstream | None = None
        self.timer: Deadline | None = None
        self.timedOut = False
        self.sentName = question.name
        self.caseCheck = False

    def start(self) -> None:
        """
        Try the upstreams that are up (all of them when none is).
        """
        resolver = self.resolver
        self.candidates = resolver._candidates or resolver.candidates()
        if not self.candidates:
            self.outcomeFailed(Failure(UpstreamFailure("no upstreams are configured")))
            return
        resolver.resolving.add(self)
        self._next()

    def outcomeFailed(self, reason: Failure) -> None:
        """
        Tell the failure.
        """
        self.failed(reason, self.context)

    def _succeed(self, answer: bytes, upstream: Upstream) -> None:
        """
        The outcome: this answer, with the client's ID and the client's
        question name (the transports matched it to the name sent, which has
        the same length, so it sits at the same place).
        """
        self.resolver.resolving.discard(self)
        query = self.query
        end = HEADER_SIZE + len(self.question.name)
        self.answered(
            b"".join((query[:2], answer[2:HEADER_SIZE], query[HEADER_SIZE:end], answer[end:])), upstream, self.context
        )

    def _fail(self, reason: Failure | Exception) -> None:
        """
        The outcome: no answer.
        """
        self.resolver.resolving.discard(self)
        self.outcomeFailed(reason if isinstance(reason, Failure) else Failure(reason))

    def _next(self) -> None:
        """
        Send the next attempt: to the next candidate of this pass, or, after a
        full pass with nothing better than a SERVFAIL/REFUSED answer and time
        left, to the upstreams worth trying again; or give the outcome.
        """
        resolver = self.resolver
        now: float = resolver.reactor.seconds()
        left = self.deadlineAt - now
        while True:
            if self.index < len(self.candidates) and left > 0:
                state = self.candidates[self.index]
                self.index += 1
                randomize = resolver.randomizeCase and state.upstream.transport == "udp" and state.plainCaseUntil <= now
                self._send(state, state.upstream, randomize=randomize, now=now)
                return
            if self.lastRefusal is not None or left <= 0 or not self.again:
                break
            self.candidates, self.again, self.index = self.again, [], 0
        if self.lastRefusal is not None:
            self._succeed(*self.lastRefusal)
        elif left <= 0:
            self._fail(
                UpstreamFailure(f"no upstream answered within the {self.resolver.deadline:g}s deadline", self.tried)
            )
        else:
            self._fail(UpstreamFailure("every upstream failed", self.tried))

    def _send(
        self,
        state: _UpstreamState,
        upstream: Upstream,
        *,
        randomize: bool,
        caseCheck: bool = False,
        now: float | None = None,
    ) -> None:
        """
        One attempt at one upstream (or its TCP retry of a truncated UDP
        answer, or of one in another case), with the name's case randomised
        if C{randomize}; over UDP only an answer in that case is accepted.

        @param now: the reactor's time, if the caller has just read it.
        """
        resolver = self.resolver
        if now is None:
            now = resolver.reactor.seconds()
        if upstream is state.upstream:
            self.state = state
            self.started = now
        resolver.counters["upstream_queries"] += 1
        self.caseCheck = caseCheck
        name = self.sentName = randomCase(self.question.name, resolver.random) if randomize else self.question.name
        self.upstream = upstream
        left = self.deadlineAt - now
        # (L{UpstreamResolver.attemptTimeout}, inline.)
        self.timer = resolver.deadlines.add(
            now + (resolver.timeout if resolver.timeout < left else left if left > 0 else 0.0), self._timeout
        )
        if upstream.transport == "udp":
            sent = resolver._udp.send(upstream, self.query, self.question, name, randomize, self)
            if isinstance(sent, AttemptError):
                self.attemptFailed(sent)
            else:
                self.attempt = sent
            return
        attempt = self.attempt = resolver.send(upstream, self.query, self.question, name, randomize)
        attempt.addCallbacks(self.attemptAnswered, self.attemptFailed)

    def _timeout(self) -> None:
        """
        The attempt waited too long: forget it (its Deferred fails, cancelled).
        """
        self.timer = None
        self.timedOut = True
        assert self.attempt is not None
        self.attempt.cancel()

    def _attemptOver(self) -> None:
        """
        The attempt got its outcome: stop its timer.
        """
        self.attempt = None
        if self.timer is not None:
            self.resolver.deadlines.cancel(self.timer)
            self.timer = None

    def attemptAnswered(self, answer: bytes) -> None:
        """
        An answer came: retry a truncated UDP answer over TCP; any other is
        proof the upstream is reachable, and is the outcome unless it is
        SERVFAIL or REFUSED, which moves on to the next upstream.
        """
        # (L{_attemptOver}, inline: one call less per query forwarded.)
        self.attempt = None
        resolver = self.resolver
        if self.timer is not None:
            resolver.deadlines.cancel(self.timer)
            self.timer = None
        state = self.state
        upstream = self.upstream
        assert state is not None and upstream is not None
        if upstream.transport == "udp" and answer[2] & _TC_BYTE:
            resolver.counters["upstream_truncated"] += 1
            self._send(state, attrs.evolve(upstream, transport="tcp"), randomize=False)
            return
        if self.caseCheck and answer[HEADER_SIZE : HEADER_SIZE + len(self.sentName)] != self.sentName:
            resolver.caseNotKept(state)
        resolver.counters["upstream_answers"] += 1
        resolver.latency.observe(resolver.reactor.seconds() - self.started)
        if state.fails or not state.up:
            resolver.succeeded(state)
        rcode = answer[3] & RCODE_MASK
        if rcode in _RCODE_NAMES:
            resolver.counters["upstream_error_answers"] += 1
            self.tried.append(f"{state.upstream} (answered {_RCODE_NAMES[rcode]})")
            state.lastError = f"answered {_RCODE_NAMES[rcode]}"
            self.lastRefusal = answer, state.upstream
            self._next()
            return
        self._succeed(answer, state.upstream)

    def attemptFailed(self, reason: Failure | BaseException) -> None:
        """
        No answer: a timeout makes the upstream worth trying again after the
        pass; an error too, once, if it is one that a new connection may not
        have (L{AttemptError.retryable}); being cancelled abandons the query.
        An answer in another case than sent is asked again over TCP, in a
        random case, which tells whether the upstream keeps the case.  An
        upstream with no room for the query (L{UpstreamBusy}) is passed over
        for this query, with no mark against its health.
        """
        self._attemptOver()
        resolver = self.resolver
        state = self.state
        assert state is not None
        error = reason.value if isinstance(reason, Failure) else reason
        if isinstance(error, CaseMismatch):
            resolver.counters["upstream_case_mismatches"] += 1
            self._send(state, attrs.evolve(state.upstream, transport="tcp"), randomize=True, caseCheck=True)
            return
        if self.timedOut and isinstance(error, CancelledError):
            self.timedOut = False
            resolver.counters["upstream_timeouts"] += 1
            why = f"timed out after {resolver.reactor.seconds() - self.started:g}s"
            resolver.failed(state, why)
            self.tried.append(f"{state.upstream} ({why})")
            self.again.append(state)
        elif isinstance(error, UpstreamBusy):
            self.tried.append(f"{state.upstream} ({error})")
        elif isinstance(error, AttemptError):
            resolver.counters["upstream_failures"] += 1
            resolver.failed(state, str(error))
            self.tried.append(f"{state.upstream} ({error})")
            if error.retryable and state.upstream not in self.retriedErrors:
                self.retriedErrors.add(state.upstream)
                self.again.append(state)
        elif isinstance(error, CancelledError):
            self._fail(UpstreamFailure("abandoned (the resolver stopped or the query was cancelled)", self.tried))
            return
        else:
            self._fail(reason if isinstance(reason, Failure) else Failure(reason))
            return
        self._next()

    def cancel(self) -> None:
        """
        Abandon the attempt in progress (which fails the query with L{UpstreamFailure}).
        """
        if self.attempt is not None:
            self.attempt.cancel()
