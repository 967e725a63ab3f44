"""
The TLS transport under every netd TLS connection, on public Twisted and
pyOpenSSL calls only: Twisted's L{TLSMemoryBIOProtocol} with netd's write
coalescing and a public witness of session resumption.  It is the record
path when the record pump's start-up check fails, and the base the pump
(L{netd.tls.pump.RecordPump}) replaces the hot methods of.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

_MAX_WAITING = 64_000
"""
Bytes written outside a read that are sent at once rather than at the next
reactor turn (as Twisted's own write aggregation).
"""

_WRITE_CERTIFICATE = b"SSLv3/TLS write certificate"
"""
OpenSSL's state while a server sends its Certificate message, which a
handshake that resumes a session skips (TLS 1.2 and 1.3 alike).
"""


class TLSTransportFactory(TLSMemoryBIOFactory):
    """
    Twisted's TLS factory with its clock public, for L{TLSTransport}.
    """

    def __init__(self, contextFactory: Any, isClient: bool, wrappedFactory: Any, clock: IReactorTime) -> None:
        super().__init__(contextFactory, isClient, wrappedFactory, clock=clock)
        self.clock = clock


def _noteCertificateSent(connection: SSL.Connection, where: int, result: int) -> None:
    """
    OpenSSL's info callback on the public path: note on the connection's
    L{TLSTransport} that the server sent its certificate.
    """
    if where & SSL.SSL_CB_ACCEPT_LOOP and connection.get_state_string() == _WRITE_CERTIFICATE:
        protocol = connection.get_app_data()
        if isinstance(protocol, TLSTransport):
            protocol.certificateSent = True


class TLSTransport(TLSMemoryBIOProtocol):
    """
    Twisted's TLS protocol with writes coalesced: what the application
    writes while a read is being delivered (an echo's reply, a response) is
    held and encrypted in one go when the read is done, in the same reactor
    turn; what it writes outside a read is sent at the next turn, or at once
    past L{_MAX_WAITING} bytes (Twisted's C{BufferingTLSTransport} schedules a
    timed call for both, and offers no public flush).

    @ivar certificateSent: whether the handshake sent the server's
        certificate (so did not resume a session), seen through OpenSSL's
        public info callback.
    """

    factory: TLSTransportFactory
    certificateSent = False
    _receiving = False
    _waitingBytes = 0
    _sendCall: IDelayedCall | None = None

    def __init__(self, factory: TLSTransportFactory, wrappedProtocol: Any, _connectWrapped: bool = True) -> None:
        super().__init__(factory, wrappedProtocol, _connectWrapped)
        self._held: list[bytes] = []
        # An instance attribute: the hot path skips a lookup.
        self.write = self._applicationWrite  # type: ignore[method-assign]

    def makeConnection(self, transport: Any) -> None:
        """
        Twisted's start of the handshake, watched by the info callback.
        """
        TLSMemoryBIOProtocol.makeConnection(self, transport)
        handle = self.getHandle()
        if handle is not None:
            handle.set_info_callback(_noteCertificateSent)

    def dataReceived(self, data: bytes) -> None:
        """
        Feed TLS (Twisted's path), holding what the application writes
        meanwhile; then send that.
        """
        self._receiving = True
        try:
            TLSMemoryBIOProtocol.dataReceived(self, data)
        finally:
            self._receiving = False
        if self._held:
            self._sendHeld()

    def readConnectionLost(self) -> None:
        """
        The peer's TCP EOF: TLS has no half-close of its own, so the
        connection ends after what was written, as under a transport that is
        not half-closeable.  Declared here because Twisted's wrapper takes on
        the interfaces of the transport below, half-closeability included,
        and would otherwise pass the call back down to it, which calls here
        again.
        """
        transport: Any = self.transport
        transport.loseConnection()

    def sessionReused(self) -> bool:
        """
        Whether the finished handshake resumed a session: it did when the
        server did not send its certificate.
        """
        return not self.certificateSent

    def _applicationWrite(self, data: bytes) -> None:
        """
        The application's C{transport.write}: held until the read being
        delivered is done, or until the next reactor turn.
        """
        # A bytearray or memoryview is copied: the caller may reuse it.
        self._held.append(data if type(data) is bytes else bytes(memoryview(data)))
        if not self._receiving:
            self._sendSoon(len(data))

    def _sendSoon(self, size: int) -> None:
        """
        Send what is held at the next reactor turn, or now once enough waits.
        """
        waiting = self._waitingBytes + size
        if waiting > _MAX_WAITING:
            self._waitingBytes = 0
            self._sendHeld()
            return
        # Not reset when a read sends what is held: that only sends sooner.
        self._waitingBytes = waiting
        if self._sendCall is None:
            self._sendCall = self.factory.clock.callLater(0, self._sendWaiting)

    def _sendWaiting(self) -> None:
        """
        The next reactor turn after a write outside a read: send what is held.
        """
        self._sendCall = None
        self._waitingBytes = 0
        if self._held:
            self._sendHeld()

    def writeSequence(self, sequence: Any) -> None:
        """
        Write the pieces as one.
        """
        self.write(b"".join(sequence))

    def _sendHeld(self) -> None:
        """
        Encrypt and send what was held.
        """
        held = self._held
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        TLSMemoryBIOProtocol.write(self, data)

    def loseConnection(self) -> None:
        """
        Send what is held first: the close comes after it.
        """
        if self._held:
            self._sendHeld()
        super().loseConnection()

    def unregisterProducer(self) -> None:
        """
        Send what is held first: unregistering a producer after
        C{loseConnection} starts the close.
        """
        if self._held:
            self._sendHeld()
        super().unregisterProducer()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Drop what is held (what is written from now on, Twisted drops).
        """
        if self._sendCall is not None:
            self._sendCall.cancel()
            self._sendCall = None
        self._held.clear()
        super().connectionLost(reason)
