"""
The server side of TLS for every stream service: a service's C{tls} table
puts a L{TLSServerFactory} between the core's connection guard and the
framing, so a connection is, from the socket inward::

    GuardedConnection -> TLSServerProtocol -> framing -> the plugin's receiver

Each connection must finish its handshake within C{handshake_timeout}
seconds.  Handshakes are counted per service: C{tls_handshakes_ok},
C{tls_sessions_resumed}, and C{tls_handshakes_failed_REASON} with REASON one
of L{netd.tls.failures.FAILURE_REASONS}; a failure is logged at info with its
reason, a success at debug with the version, cipher, SNI name, ALPN protocol
and client certificate subject.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IAddress, IProtocolFactory, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netd import logs
from netd.interfaces import IAwaitsHandshake, IServerTLSTransport
from netd.metrics import Counters
from netd.tls.contexts import ServerTLS
from netd.tls.failures import classifyFailure
from netd.tls.keys import describeSubject
from netd.tls.pump import RECORD_PUMP, RecordPump
from netd.tls.transport import TLSTransport, TLSTransportFactory


@implementer(IServerTLSTransport)
class TLSServerProtocol(TLSTransport):
    """
    The server side of one TLS connection: a handshake timeout, and the
    handshake counted and logged.  On public Twisted and pyOpenSSL calls
    only (the fallback when the record pump's start-up check fails);
    L{PumpedTLSServerProtocol} is the same on the pump.

    @ivar failure: why the handshake is failing, when netd knows better than
        OpenSSL's error (a timeout, a client not allowed): C{(reason, detail)}.
    @ivar tlsDetails: once the handshake is settled, what the connection's
        event in the service's event log says of it: C{version}, C{cipher},
        C{sni}, C{alpn}, C{client_certificate} (its subject) and C{resumed};
        or, when it failed, C{failure} (one of L{netd.tls.failures.FAILURE_REASONS}) and
        C{detail}.  L{None} until then.
    """

    factory: TLSServerFactory
    failure: tuple[str, str] | None = None
    tlsDetails: dict[str, Any] | None = None
    _handshakeTimer: Any = None
    _settled = False
    _peer: IAddress | None = None

    def makeConnection(self, transport: Any) -> None:
        """
        Start the handshake timer, then the handshake.
        """
        self._peer = transport.getPeer()
        timeout = self.factory.handshakeTimeout
        if timeout:
            self._handshakeTimer = self.factory.clock.callLater(timeout, self._handshakeTimedOut)
        super().makeConnection(transport)

    def handshakeSucceeded(self) -> None:
        """
        The handshake finished (told by L{netd.tls.contexts.ServerConnection}):
        stop its timer, count it, tell the framing above (L{IAwaitsHandshake}),
        log what was negotiated.
        """
        if self._settled:
            return
        self._settled = True
        self._stopTimer()
        factory = self.factory
        factory.counters["tls_handshakes_ok"] += 1
        connection = self.getHandle()
        resumed = self.sessionReused()
        if resumed:
            factory.counters["tls_sessions_resumed"] += 1
        peerCertificate = connection.get_peer_certificate(as_cryptography=True)
        serverName = connection.get_servername()
        alpn = connection.get_alpn_proto_negotiated()
        details = self.tlsDetails = {
            "version": connection.get_protocol_version_name(),
            "cipher": connection.get_cipher_name(),
            "sni": serverName.decode("ascii", "replace") if serverName else None,
            "alpn": alpn.decode("ascii", "replace") if alpn else None,
            "client_certificate": describeSubject(peerCertificate) if peerCertificate is not None else None,
            "resumed": resumed,
        }
        above = self.wrappedProtocol
        if IAwaitsHandshake.providedBy(above):
            above.handshakeCompleted()
        if not logs.debugEnabled:
            return
        factory.log.debug(
            "TLS from {peer}: {tls_version} {tls_cipher}, SNI {tls_sni}, ALPN {tls_alpn}, client {tls_client}{resumption}",
            peer=self._peer,
            tls_version=details["version"],
            tls_cipher=details["cipher"],
            tls_sni=details["sni"],
            tls_alpn=details["alpn"],
            tls_client=details["client_certificate"],
            tls_resumed=resumed,
            resumption=", resumed" if resumed else "",
        )

    def handshakePending(self) -> bool:
        """
        Whether the handshake has not finished: not yet, or it failed.
        """
        details = self.tlsDetails
        return details is None or "failure" in details

    def _handshakeFailed(self, reason: Failure) -> None:
        """
        The connection ended before its handshake finished: count and log why.
        """
        self._settled = True
        self._stopTimer()
        name, detail = self.failure or classifyFailure(reason)
        self.tlsDetails = {"failure": name, "detail": detail}
        self.factory.counters[f"tls_handshakes_failed_{name}"] += 1
        self.factory.log.info(
            "TLS handshake from {peer} failed: {tls_failure} ({detail})",
            peer=self._peer,
            tls_failure=name,
            detail=detail,
        )

    def _handshakeTimedOut(self) -> None:
        """
        No handshake within C{handshake_timeout}: drop the connection.
        """
        self._handshakeTimer = None
        if self.failure is None:
            self.failure = ("timeout", f"no handshake within {self.factory.handshakeTimeout:g} seconds")
        self.abortConnection()

    def _stopTimer(self) -> None:
        if self._handshakeTimer is not None:
            self._handshakeTimer.cancel()
            self._handshakeTimer = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Count the handshake as failed if it did not finish, then pass the loss on.
        """
        if not self._settled:
            self._handshakeFailed(reason)
        super().connectionLost(reason)


class PumpedTLSServerProtocol(TLSServerProtocol, RecordPump):
    """
    L{TLSServerProtocol} with its records moved by the record pump
    (L{netd.tls.pump.RecordPump}), at less than half the per-record cost.
    """


class TLSServerFactory(TLSTransportFactory):
    """
    Terminates TLS in front of a service's framing (see the module docstring).

    @ivar tls: the service's L{ServerTLS}.
    """

    protocol: type[TLSServerProtocol] = PumpedTLSServerProtocol

    def __init__(
        self,
        tls: ServerTLS,
        wrappedFactory: IProtocolFactory,
        *,
        clock: IReactorTime,
        counters: Counters,
        log: Logger,
    ) -> None:
        super().__init__(tls, False, wrappedFactory, clock)
        self.tls = tls
        self.counters = counters
        self.log = log
        self.handshakeTimeout = tls.options.handshake_timeout
        if not RECORD_PUMP.alive():
            self.protocol = TLSServerProtocol

    def startFactory(self) -> None:
        """
        The service listens: rotate its session-ticket keys on its clock.
        """
        self.tls.startRotation(self.clock)

    def stopFactory(self) -> None:
        """
        The service's last port closed: stop rotating.
        """
        self.tls.stopRotation()
