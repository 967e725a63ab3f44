"""
Stream and TLS handshake faults on one connection, between its guard
(L{netd.stream.guard.GuardedConnection}) and its socket.

A connection asks its service's faults once, when it opens, which of the
C{stream} and C{tls} faults apply to it (each schedule counts one
connection).  When none does, the guard keeps its plain path: no object, no
cost per byte.  When some do, a L{ConnectionFaults} takes the bytes each way:
what the client sends, before the inner protocol (TLS or the framing) reads it,
and what the inner protocol writes, before the socket gets it.  So on a TLS
service the byte faults act on the TLS records the client really receives,
and the TLS faults act on the raw handshake, nearest the TLS engine.

Each direction is a L{_Pipe}: a queue of held chunks, in order, let go when
their latency has passed, in pieces no larger than a slice and no faster than a
bandwidth, counting the bytes that pass for C{close_after}, C{reset_after}
and C{stall_after}.  Held bytes are bounded: past L{HELD_LIMIT} the socket
stops being read until they drain below L{RESUME_BELOW}.  Every timer is
cancelled when the connection goes.

A change of the service's faults (the control API) reaches open connections
too: they take the new list's C{midStream} faults whose schedule is
unconditional and lose the ones no longer there; bytes held by a fault that
is gone are let go at once.
"""

from __future__ import annotations

import socket
import struct
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall

from netd.faults.active import ActiveFault, ServiceFaults
from netd.faults.spec import TLS_ALERTS, Fault
from netd.stream.proxyheader import describePeer

if TYPE_CHECKING:
    from netd.stream.guard import GuardedConnection

HELD_LIMIT = 64 * 1024
"""
Bytes a connection's faults may hold (both ways together) before the socket
stops being read.
"""

RESUME_BELOW = HELD_LIMIT // 2
"""
Held bytes below which a socket paused by L{HELD_LIMIT} is read again.
"""

BANDWIDTH_PIECES = 20
"""
Pieces per second a C{bandwidth} fault cuts the bytes into (each worth
1/20 s of its rate, at least one byte), so that its rate holds over short
spans too.
"""

TLS_HANDSHAKE = 22
"""
The content type of a TLS handshake record (the first byte of a ClientHello).
"""

TLS_ALERT = 21
"""
The content type of a TLS alert record.
"""

RECORD_HEADER = 5
"""
Bytes of a TLS record header: type, legacy version (2), length (2).
"""

_THRESHOLDS = {"close_after": "close", "reset_after": "reset", "stall_after": "stall"}
"""
The faults that act once their direction has passed C{bytes} bytes, and what they do.
"""


def alertRecord(alert: str) -> bytes:
    """
    A plaintext fatal TLS alert record, as a server sends one in answer to a
    ClientHello it refuses: content type 21, legacy version 0x0303, level 2
    (fatal), the description of C{alert} (a name of L{TLS_ALERTS}).
    """
    return bytes([TLS_ALERT, 3, 3, 0, 2, 2, TLS_ALERTS[alert]])


def resetTransport(transport: Any) -> None:
    """
    End a connection with a TCP RST: what netd has written goes to the
    socket first (as much as the kernel takes), then the socket closes with
    C{SO_LINGER} C{{1, 0}}, so that the peer sees C{ECONNRESET}.
    """
    if getattr(transport, "connected", False):
        flush = getattr(transport, "doWrite", None)
        if flush is not None:
            flush()
    getHandle = getattr(transport, "getHandle", None)
    handle = getHandle() if getHandle is not None else None
    # A socket.socket, or uvloop's stand-in for one (netd.reactors.uv).
    setsockopt = getattr(handle, "setsockopt", None)
    if setsockopt is not None:
        try:
            setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abortConnection()


class _Effect:
    """
    One fault acting on one connection: whether its use was reported yet.
    """

    def __init__(self, fault: ActiveFault) -> None:
        self.fault = fault
        self.spec: Any = fault.spec
        self.reported = False


class _Threshold:
    """
    A C{close_after}, C{reset_after} or C{stall_after} on one direction: it
    acts when that direction's count of passed bytes reaches C{at}.
    """

    def __init__(self, effect: _Effect, at: int) -> None:
        self.effect = effect
        self.at = at
        self.action = _THRESHOLDS[effect.spec.typeName]


class _Pipe:
    """
    One direction of a connection's bytes through its stream faults.

    @ivar held: bytes queued, not yet passed on.
    @ivar passed: bytes passed on so far.
    @ivar stalledBy: the C{stall_after} that silenced this direction, if one did.
    @ivar ended: the connection is ending: nothing passes any more.
    """

    def __init__(self, owner: ConnectionFaults, direction: str, deliver: Callable[[bytes], None]) -> None:
        self.owner = owner
        self.direction = direction
        self.deliver = deliver
        self.queue: deque[tuple[float, bytes]] = deque()
        self.held = 0
        self.passed = 0
        self.stalledBy: _Effect | None = None
        self.ended = False
        self._nextAt = 0.0
        self._lastReady = 0.0
        self._timer: IDelayedCall | None = None
        self._pumping = False
        self.latency: list[_Effect] = []
        self.bandwidth: _Effect | None = None
        self.slice: _Effect | None = None
        self.blackhole: _Effect | None = None
        self.thresholds: list[_Threshold] = []

    @property
    def acting(self) -> bool:
        """
        Whether any fault acts on this direction.
        """
        return bool(
            self.latency or self.bandwidth or self.slice or self.blackhole or self.thresholds or self.stalledBy
        )

    def configure(self, effects: Sequence[_Effect]) -> None:
        """
        Take the faults of this direction among C{effects}: latencies add up,
        the lowest rate and the smallest slice act, each threshold counts from
        now (one kept from before keeps its count), the first blackhole swallows.
        """
        kept = {id(t.effect): t for t in self.thresholds}
        mine = [e for e in effects if e.spec.direction in (self.direction, "both")]
        self.latency = [e for e in mine if e.spec.typeName == "latency"]
        rates = [e for e in mine if e.spec.typeName == "bandwidth"]
        self.bandwidth = min(rates, key=lambda e: e.spec.rate, default=None)
        slices = [e for e in mine if e.spec.typeName == "slice"]
        self.slice = min(slices, key=lambda e: e.spec.size, default=None)
        self.blackhole = next((e for e in mine if e.spec.typeName == "blackhole"), None)
        self.thresholds = [
            kept.get(id(e)) or _Threshold(e, self.passed + e.spec.bytes) for e in mine if e.spec.typeName in _THRESHOLDS
        ]
        if self.stalledBy is not None and all(e is not self.stalledBy for e in mine):
            self.stalledBy = None

    def push(self, data: bytes) -> None:
        """
        Take bytes going this way: swallow, drop or queue them, then pass on
        what may go now.
        """
        if self.ended or self.stalledBy is not None or not data:
            return
        if self.blackhole is not None:
            self.owner.report(self.blackhole, direction=self.direction)
            return
        now = self.owner.clock.seconds()
        ready = now
        for effect in self.latency:
            spec = effect.spec
            jitter = effect.fault.schedule.random.uniform(-spec.jitter, spec.jitter) if spec.jitter else 0.0
            ready += max(0.0, spec.ms + jitter) / 1000
            self.owner.report(effect, direction=self.direction)
        for pacing in (self.bandwidth, self.slice):
            if pacing is not None:
                self.owner.report(pacing, direction=self.direction)
        ready = self._lastReady = max(ready, self._lastReady)
        self.queue.append((ready, data))
        self.held += len(data)
        if self._timer is None and not self._pumping:
            self.pump()

    def pump(self) -> None:
        """
        Pass on every piece whose time has come, in order; then wait for the
        next one, or tell the connection this way is drained.
        """
        self._timer = None
        self._pumping = True
        try:
            self._pass()
        finally:
            self._pumping = False
        if not self.ended:
            self.owner.pace()
            if not self.queue:
                self.owner.drained(self)

    def _pass(self) -> None:
        """
        The loop of L{pump}.
        """
        clock = self.owner.clock
        if self._crossed():
            return
        while self.queue and not self.ended and self.stalledBy is None:
            now = clock.seconds()
            ready, data = self.queue[0]
            at = max(ready, self._nextAt)
            if at > now:
                self._timer = clock.callLater(at - now, self.pump)
                return
            size = len(data)
            if self.slice is not None:
                size = min(size, self.slice.spec.size)
            if self.bandwidth is not None:
                size = min(size, max(1, self.bandwidth.spec.rate // BANDWIDTH_PIECES))
            for threshold in self.thresholds:
                size = min(size, threshold.at - self.passed)
            if size < len(data):
                self.queue[0] = (ready, data[size:])
                data = data[:size]
            else:
                self.queue.popleft()
            self.held -= size
            self.passed += size
            self.deliver(data)
            if self._crossed():
                return
            gap = 0.0
            if self.slice is not None:
                gap = self.slice.spec.delay / 1000
            if self.bandwidth is not None:
                gap = max(gap, size / self.bandwidth.spec.rate)
            self._nextAt = now + gap
            if self.queue and self.slice is not None:
                # Even without a delay, the next piece waits for the next
                # reactor turn, so that it leaves in a send of its own.
                self._timer = clock.callLater(gap, self.pump)
                return

    def _crossed(self) -> bool:
        """
        If a threshold is reached, act on it; whether this direction stops.
        """
        for threshold in self.thresholds:
            if self.passed >= threshold.at:
                self.owner.thresholdReached(self, threshold)
                return True
        return False

    def stall(self, effect: _Effect) -> None:
        """
        Pass nothing more this way, and forget what is held.
        """
        self.stalledBy = effect
        self.cancel()

    def cancel(self) -> None:
        """
        Forget what is held and stop the timer.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.queue.clear()
        self.held = 0

    def requeue(self) -> None:
        """
        Pass what is held through the faults as they now are, from now.
        """
        held = [data for _, data in self.queue]
        self.cancel()
        self._nextAt = self._lastReady = 0.0
        for data in held:
            self.push(data)
        if not held and not self.ended:
            self.pump()


class _TLSFault:
    """
    A C{tls_abort}, C{tls_garbage} or C{tls_stall} on one connection.

    C{tls_abort} and C{tls_garbage} read the client's first TLS record (its
    ClientHello; at most one record, 5 + 65535 bytes, is buffered) without
    passing it to the TLS engine, answer it, and close.  A first byte that
    cannot start a TLS handshake record is not theirs to answer: the bytes go
    to the TLS engine, which fails the handshake as it fails any non-TLS
    client (C{not_tls}), and the fault is not counted as applied.

    C{tls_stall} lets the handshake start and passes the first record the
    server writes (its ServerHello), then nothing more.
    """

    def __init__(self, owner: ConnectionFaults, effect: _Effect) -> None:
        self.owner = owner
        self.effect = effect
        self.kind = effect.spec.typeName
        self.done = self.kind == "tls_stall"
        self._buffer = bytearray()
        self._sent = 0
        self._recordEnd: int | None = None
        self.stalled = False

    def inbound(self, data: bytes) -> bytes:
        """
        What of C{data} goes on to the TLS engine.
        """
        if self.done or not data:
            return data
        self._buffer += data
        if self._buffer[0] != TLS_HANDSHAKE:
            self.done = True
            data, self._buffer = bytes(self._buffer), bytearray()
            return data
        if len(self._buffer) < RECORD_HEADER:
            return b""
        length = int.from_bytes(self._buffer[3:5], "big")
        if len(self._buffer) < RECORD_HEADER + length:
            return b""
        self.done = True
        self._buffer = bytearray()
        spec = self.effect.spec
        if self.kind == "tls_abort":
            self.owner.answerTLS(self.effect, alertRecord(spec.alert), alert=spec.alert)
        else:
            answer = spec.data.encode("utf-8")
            self.owner.answerTLS(self.effect, answer, bytes=len(answer))
        return b""

    def outbound(self, data: bytes) -> bytes:
        """
        What of C{data} (written by the TLS engine) goes on to the client.
        """
        if self.kind != "tls_stall":
            return data
        if self.stalled:
            return b""
        if self._recordEnd is None:
            self._buffer += data[: RECORD_HEADER - len(self._buffer)]
            if len(self._buffer) == RECORD_HEADER:
                self._recordEnd = RECORD_HEADER + int.from_bytes(self._buffer[3:5], "big")
        end = self._recordEnd if self._recordEnd is not None else RECORD_HEADER
        passing = data[: end - self._sent]
        self._sent += len(passing)
        if self._recordEnd is not None and self._sent >= self._recordEnd:
            self.stalled = True
            self.owner.report(self.effect, record_bytes=self._recordEnd)
        return passing


class ConnectionFaults:
    """
    The stream and TLS faults acting on one connection (see the module docstring).

    @ivar inbound: the bytes from the client.
    @ivar outbound: the bytes to the client.
    @ivar tls: the TLS handshake fault, if one applies.
    """

    def __init__(self, connection: GuardedConnection, service: ServiceFaults, chosen: Sequence[ActiveFault]) -> None:
        self.connection = connection
        self.service = service
        self.clock = connection.factory.clock
        self.peer = describePeer(connection.getPeer())
        self.inbound = _Pipe(self, "from_client", self._toInner)
        self.outbound = _Pipe(self, "to_client", connection.transmit)
        self.effects: list[_Effect] = []
        self.refuse: _Effect | None = None
        self.tls: _TLSFault | None = None
        self._closing = False
        self._eofWaiting = False
        self._paused = False
        self._ended = False
        for fault in chosen:
            effect = _Effect(fault)
            family = fault.spec.family
            if fault.spec.typeName == "refuse":
                if self.refuse is None:
                    self.refuse = effect
            elif family == "tls":
                if self.tls is None:
                    self.tls = _TLSFault(self, effect)
            else:
                self.effects.append(effect)
        self.inbound.configure(self.effects)
        self.outbound.configure(self.effects)

    def start(self) -> None:
        """
        The connection is open (its inner protocol too): refuse it, or act on
        the thresholds already reached (C{bytes = 0}).
        """
        if self.refuse is not None:
            self.report(self.refuse, reset=self.refuse.spec.reset)
            self.end(self.refuse, reset=self.refuse.spec.reset)
            return
        for pipe in (self.outbound, self.inbound):
            if not self._ended:
                pipe.pump()

    # The connection's bytes.

    def received(self, data: bytes) -> None:
        """
        Bytes from the client.
        """
        self.inbound.push(data)
        self.pace(arrived=True)

    def write(self, data: bytes) -> None:
        """
        Bytes the inner protocol writes to the client.
        """
        if self.tls is not None:
            data = self.tls.outbound(data)
        self.outbound.push(data)
        self.pace()

    def _toInner(self, data: bytes) -> None:
        """
        Pass bytes from the client on to the inner protocol (through the TLS
        fault, if one applies), unless netd is closing the connection.
        """
        connection = self.connection
        if connection.disconnecting:
            return
        if self.tls is not None:
            data = self.tls.inbound(data)
            if not data:
                return
        connection.wrappedProtocol.dataReceived(data)

    def pace(self, arrived: bool = False) -> None:
        """
        Stop reading from the socket while the bytes held are over
        L{HELD_LIMIT} (or the client's direction is stalled), and read again
        once they are under L{RESUME_BELOW}.

        @param arrived: bytes just arrived, so something resumed reading (the
            transport's own pacing does when its send buffer drains): pause
            it again if need be.
        """
        transport = self.connection.transport
        if self._ended or self.connection.disconnecting or transport.disconnecting:  # type: ignore[union-attr]
            return
        held = self.inbound.held + self.outbound.held
        hold = self.inbound.stalledBy is not None or held > (RESUME_BELOW if self._paused else HELD_LIMIT)
        if hold and (arrived or not self._paused):
            self._paused = True
            transport.pauseProducing()  # type: ignore[union-attr]
        elif not hold and self._paused:
            self._paused = False
            transport.resumeProducing()  # type: ignore[union-attr]

    # Ending.

    def holdsOutbound(self) -> bool:
        """
        Whether bytes to the client are still held, so that a close must wait for them.
        """
        return bool(self.outbound.queue)

    def holdsInbound(self) -> bool:
        """
        Whether bytes from the client are still held, so that the client's
        EOF must wait for them.
        """
        return bool(self.inbound.queue)

    def closeWhenDrained(self) -> None:
        """
        The inner protocol closed the connection: close it once the bytes
        held for the client are written.
        """
        self._closing = True

    def eofWhenDrained(self) -> None:
        """
        The client sent EOF: tell the connection once the bytes held from the
        client are passed on.
        """
        self._eofWaiting = True

    def drained(self, pipe: _Pipe) -> None:
        """
        C{pipe} holds nothing more: a close or an EOF waiting for it goes on.
        """
        if pipe is self.outbound and self._closing:
            self._closing = False
            self.connection.transport.loseConnection()  # type: ignore[union-attr]
        elif pipe is self.inbound and self._eofWaiting:
            self._eofWaiting = False
            self.connection.readConnectionLost()

    def thresholdReached(self, pipe: _Pipe, threshold: _Threshold) -> None:
        """
        A direction has passed a threshold's bytes: close, reset, or stall it.
        """
        effect = threshold.effect
        self.report(effect, direction=pipe.direction, bytes=effect.spec.bytes)
        if threshold.action == "stall":
            pipe.stall(effect)
            self.pace()
        else:
            self.end(effect, reset=threshold.action == "reset")

    def answerTLS(self, effect: _Effect, answer: bytes, **details: Any) -> None:
        """
        A TLS fault answers the ClientHello with C{answer}, then closes once
        it is written.
        """
        self.report(effect, **details)
        self.outbound.push(answer)
        self.connection.endByFault(f"closed by fault {effect.spec.typeName}")

    def end(self, effect: _Effect, reset: bool) -> None:
        """
        A fault ends the connection now: bytes held are dropped.
        """
        how = "reset" if reset else "closed"
        self.stop()
        self.connection.endByFault(f"{how} by fault {effect.spec.typeName}", reset=reset)

    def stop(self) -> None:
        """
        The connection is ending or gone: drop what is held, cancel every timer.
        """
        self._ended = True
        for pipe in (self.inbound, self.outbound):
            pipe.ended = True
            pipe.cancel()

    # Reporting and changes.

    def report(self, effect: _Effect, **details: Any) -> None:
        """
        Count a fault's use on this connection, once.
        """
        if not effect.reported:
            effect.reported = True
            self.service.applied(effect.fault, peer=self.peer, **details)

    def update(self, chosen: Sequence[ActiveFault]) -> bool:
        """
        The service's faults changed: act by C{chosen} (the new list's
        mid-stream faults) from now on, keeping the state of faults that are
        still there, and let go of what the others hold.

        @return: whether any fault still acts on the connection (when none
            does, the connection can drop this object).
        """
        old: dict[Fault, list[_Effect]] = {}
        for effect in self.effects:
            old.setdefault(effect.spec, []).append(effect)
        self.effects = []
        for fault in chosen:
            reuse = old.get(fault.spec)
            self.effects.append(reuse.pop(0) if reuse else _Effect(fault))
        for pipe in (self.inbound, self.outbound):
            pipe.configure(self.effects)
        for pipe in (self.outbound, self.inbound):
            if not self._ended:
                pipe.requeue()
        self.pace()
        return bool(self.inbound.acting or self.outbound.acting or self.tls is not None or self._paused)


def openFaults(connection: GuardedConnection, service: ServiceFaults) -> ConnectionFaults | None:
    """
    The faults that act on a new connection: each stream and TLS fault's
    schedule counts the connection once; L{None} when none applies.
    """
    chosen = [fault for fault in service.stream if fault.next()]
    return ConnectionFaults(connection, service, chosen) if chosen else None


def faultsChanged(connection: GuardedConnection, service: ServiceFaults) -> None:
    """
    The service's faults changed while C{connection} is open: it takes the
    new list's mid-stream faults whose schedule is unconditional, and loses
    the others.
    """
    if connection.disconnecting:
        return
    chosen = [fault for fault in service.stream if fault.spec.midStream and fault.spec.unconditional and fault.next()]
    current = connection.streamFaults
    if current is None:
        if chosen:
            current = connection.streamFaults = ConnectionFaults(connection, service, chosen)
            current.start()
    elif not current.update(chosen):
        connection.streamFaults = None
