"""
TLS to the upstream (the C{upstream_tls} table): an endpoint whose
connection counts as made only once the TLS handshake is done, so that the
relay holds the client's bytes until the upstream is verified and a refused
handshake is an upstream failure like a refused connection.  A PROXY header
goes first, in clear, before the ClientHello (L{netd_plugins.proxy.headerfirst}).
The proxy's README tells the story ("TLS on both sides").
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.interfaces import PluginContext
from netd.stream.guard import resetTransport
from netd.tls.client import clientCreatorFor, describeTLSFailure
from netd.tls.options import ClientTLSOptions

TABLE = ("upstream_tls",)
"""
The key path of the table in a proxy service, which errors name.
"""


class UpstreamTLSError(ConnectionError):
    """
    The TLS handshake with the upstream failed; the message says why
    (L{describeTLSFailure}), for the relay's log line and event.
    """


def endpointHost(description: str) -> str | None:
    """
    The host of a C{tcp:} client endpoint string (C{tcp:HOST:PORT} or
    C{tcp:host=HOST:port=PORT}, colons escaped with a backslash), or L{None}
    for another scheme: the name the upstream's certificate is checked
    against unless C{server_name} says otherwise.
    """
    fields: list[str] = []
    current = ""
    escaped = False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append(current)
            current = ""
        else:
            current += char
    fields.append(current)
    if fields[0] != "tcp":
        return None
    positional = [f for f in fields[1:] if "=" not in f]
    named = dict(f.split("=", 1) for f in fields[1:] if "=" in f)
    return named.get("host") or (positional[0] if positional else None)


class UpstreamTLSTransport(BufferingTLSTransport):
    """
    Twisted's TLS transport, as the relay needs it of an upstream: the
    client's EOF (C{loseWriteConnection}) sends TLS's close_notify while the
    upstream's answer is still read, where the TCP half-close the wrapper
    would otherwise pass down cuts the TLS stream; and an abort is a TCP
    reset, as for a plain upstream.  The factory's C{header}, if any, is
    written on the connection before TLS sends its first byte.
    """

    factory: _UpstreamTLSFactory

    def makeConnection(self, transport: Any) -> None:
        """
        Write the header in clear, then start TLS (whose ClientHello follows it).
        """
        if self.factory.header:
            transport.write(self.factory.header)
        super().makeConnection(transport)

    def loseWriteConnection(self) -> None:
        """
        No more bytes for the upstream: close_notify once what was written is
        sent; the upstream's bytes are read until its own close_notify.
        """
        self.unregisterProducer()
        self.loseConnection()

    def abortConnection(self) -> None:
        """
        End at once with a TCP reset (L{resetTransport} of the socket under TLS).
        """
        resetTransport(self.transport)
        super().abortConnection()


class _UpstreamTLSFactory(TLSMemoryBIOFactory):
    """
    TLS for one upstream connection, on L{UpstreamTLSTransport}, after C{header}.
    """

    protocol = UpstreamTLSTransport

    def __init__(
        self, creator: IOpenSSLClientConnectionCreator, wrapped: IProtocolFactory, clock: Any, header: bytes
    ) -> None:
        super().__init__(creator, True, wrapped, clock=clock)
        self.header = header


@implementer(IHandshakeListener)
class _HandshakeGate(Protocol):
    """
    What TLS carries until its handshake is done: the attempt learns of the
    handshake or of its failure; once done, the relay's protocol takes the
    TLS transport and receives what the upstream sends.
    """

    inner: IProtocol | None = None

    def __init__(self, attempt: _Attempt) -> None:
        self.attempt = attempt

    def handshakeCompleted(self) -> None:
        """
        The upstream is verified: hand the connection to the relay's protocol.
        """
        self.inner = self.attempt.handshakeDone(self.transport)

    def dataReceived(self, data: bytes) -> None:
        """
        Bytes from the upstream, for the relay (TLS delivers none before the handshake).
        """
        if self.inner is not None:
            self.inner.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Before the handshake: the attempt failed.  After: the relay's connection is gone.
        """
        if self.inner is None:
            self.attempt.handshakeFailed(reason)
            return
        self.attempt.endpoint.lostAfterHandshake(reason)
        self.inner.connectionLost(reason)


class _Attempt:
    """
    One connection to the upstream: TCP, then the TLS handshake.  C{result}
    fires with the relay's protocol once both are done, or fails with why;
    cancelling it gives up either step.
    """

    tcp: Deferred[Any] | None = None
    transport: Any = None

    def __init__(self, endpoint: TLSUpstreamEndpoint, factory: IProtocolFactory, header: bytes) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.header = header
        self.result: Deferred[IProtocol] = Deferred(self._cancel)

    def start(self) -> Deferred[IProtocol]:
        """
        Connect, write the header, handshake; the Deferred fires when the handshake is done.
        """
        endpoint = self.endpoint
        gate = Factory.forProtocol(lambda: _HandshakeGate(self))
        tls = _UpstreamTLSFactory(endpoint.creator, gate, endpoint.clock, self.header)
        self.tcp = endpoint.endpoint.connect(tls)
        self.tcp.addCallbacks(self._tcpConnected, self._tcpFailed)
        return self.result

    def _tcpConnected(self, transport: Any) -> None:
        """
        TCP is open and the handshake under way.
        """
        self.tcp = None
        self.transport = transport

    def _tcpFailed(self, reason: Failure) -> None:
        """
        No TCP connection (refused, unreachable, cancelled): the relay says why.
        """
        self.tcp = None
        if not self.result.called:
            self.result.errback(reason)

    def handshakeDone(self, transport: Any) -> IProtocol | None:
        """
        The handshake is done: the relay's protocol takes the connection.

        @return: that protocol, or L{None} if the attempt was given up.
        """
        if self.result.called:
            return None
        protocol = self.factory.buildProtocol(transport.getPeer())
        assert protocol is not None
        self.endpoint.handshakeDone()
        protocol.makeConnection(transport)
        self.result.callback(protocol)
        return protocol

    def handshakeFailed(self, reason: Failure) -> None:
        """
        The connection ended before its handshake was done: count it, and
        fail the attempt with the reason in words.
        """
        if self.result.called:
            return
        self.result.errback(Failure(UpstreamTLSError(self.endpoint.handshakeFailed(reason))))

    def _cancel(self, result: Deferred[IProtocol]) -> None:
        """
        Give the attempt up (C{connect_timeout}, or the client left): stop
        connecting, or abort the handshake.
        """
        if self.tcp is not None:
            self.tcp.cancel()
        elif self.transport is not None:
            self.transport.abortConnection()


@implementer(IStreamClientEndpoint)
@attrs.define
class TLSUpstreamEndpoint:
    """
    An upstream endpoint with TLS over it, whose C{connect} fires once the
    handshake is done (see the module's docstring), counting what went
    wrong as C{upstream_tls_failures}.

    @ivar endpoint: the TCP (or unix) endpoint under TLS.
    @ivar creator: the settings of each connection (L{clientCreatorFor}).
    @ivar verify: whether those settings check the upstream's certificate;
        handshakes that do not are counted C{upstream_tls_unverified}.
    @ivar address: the upstream as the config names it, for logs.
    @ivar clock: what TLS schedules its write flushes with (the context's reactor).
    """

    endpoint: IStreamClientEndpoint
    creator: IOpenSSLClientConnectionCreator
    verify: bool
    address: str
    context: PluginContext

    @property
    def clock(self) -> Any:
        """
        The context's reactor.
        """
        return self.context.reactor

    def connect(self, protocolFactory: IProtocolFactory, header: bytes = b"") -> Deferred[IProtocol]:
        """
        Connect, write C{header} in clear, handshake, then connect
        C{protocolFactory}'s protocol to the TLS transport.
        """
        return _Attempt(self, protocolFactory, header).start()

    def handshakeDone(self) -> None:
        """
        A handshake is done; count it if it checked nothing.
        """
        if not self.verify:
            self.context.counters["upstream_tls_unverified"] += 1

    def handshakeFailed(self, reason: Failure) -> str:
        """
        A handshake failed: count it.

        @return: why, in words.
        """
        self.context.counters["upstream_tls_failures"] += 1
        why = describeTLSFailure(reason)
        if why is None:
            what = "closed" if reason.check(ConnectionClosed) else "ended"
            why = f"the upstream {what} the connection during the handshake ({reason.getErrorMessage()})"
        return f"TLS handshake failed: {why}"

    def lostAfterHandshake(self, reason: Failure) -> None:
        """
        An established connection ended; count and log a TLS failure (with
        TLS 1.3, a server refusing the client's certificate says so only
        after the client's side of the handshake is done).
        """
        why = describeTLSFailure(reason)
        if why is None:
            return
        self.context.counters["upstream_tls_failures"] += 1
        self.context.log.warn(
            "TLS with upstream {upstream} failed after the handshake: {why}",
            upstream=self.address,
            why=why,
            event="upstream_tls_failed",
        )


def tlsUpstreamEndpoint(upstream: str, options: ClientTLSOptions, context: PluginContext) -> TLSUpstreamEndpoint:
    """
    The endpoint of a proxy service with an C{upstream_tls} table: the
    upstream's endpoint, the settings loaded once (files read now), and
    C{verify = false} warned about once.

    @raise TLSSetupError: a file cannot be read or used, naming its key path.
    """
    host = endpointHost(upstream)
    serverName = options.server_name or host
    if serverName is None:
        raise ValueError(f"upstream_tls.server_name is needed for {upstream!r}, which names no host")
    creator = clientCreatorFor(options, serverName, TABLE)
    if not options.verify:
        context.log.warn(
            "upstream_tls.verify is false: connections to {upstream} accept ANY certificate, an attacker's "
            "included (counted as upstream_tls_unverified)",
            upstream=upstream,
        )
    return TLSUpstreamEndpoint(
        endpoint=clientFromString(context.reactor, upstream),
        creator=creator,
        verify=options.verify,
        address=upstream,
        context=context,
    )
