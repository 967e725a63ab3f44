"""
The TLS record pump: the only module of netd that touches private names of
pyOpenSSL (C{OpenSSL._util}'s C{ffi} and C{lib}, a connection's C{_ssl},
C{_into_ssl}, C{_from_ssl}, C{_raise_ssl_error}, C{_handle_bio_errors}, a
context's C{_context}) and of Twisted's TLS protocol and factory (the
methods C{_write}, C{_flushSendBIO}, C{_flushReceiveBIO}, C{_bufferedWrite},
C{_tlsShutdownFinished}, C{_shutdownTLS}, C{_unbufferPendingWrites},
C{_checkHandshakeStatus}, the fields C{_handshakeDone}, C{_lostTLSConnection},
C{_aborted}, C{_tlsConnection}, C{_appSendBuffer}, and the factory's
C{_creatorCallable}).

L{RecordPump} moves records between the memory BIOs and OpenSSL with
OpenSSL's own calls, at less than half the cost of Twisted's path (see the
design note in docs/tls.md).  Whether it may is decided once, by
L{RECORD_PUMP}: a canary (L{netd.canary.Canary}) that checks every private name above exists and
runs a real in-memory handshake and records each way through the pump.  If
it fails, netd logs one warning and serves TLS on the public path
(L{netd.tls.transport.TLSTransport}), which uses none of them.
L{setGroupList} is a private use of its own, on both paths, for which
pyOpenSSL has no public call: it says when it cannot work, and the contexts
then keep OpenSSL's default groups with one warning.

Internal switch, for the tests of the fallback only: with the environment
variable C{NETD_TLS_PUMP_CANARY=fail} the canary also asks for a private name
that does not exist, and so fails as it would on a pyOpenSSL that renamed one.
"""

from __future__ import annotations

import os
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IDelayedCall, IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.canary import Canary, CanaryFailed
from netd.tls.devcerts import makeCA
from netd.tls.transport import TLSTransport, TLSTransportFactory

try:
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _openssl
except ImportError:  # the canary reports it; nothing below runs without them
    _ffi = _openssl = None


CANARY_SWITCH = "NETD_TLS_PUMP_CANARY"
"""
The environment variable that, set to C{fail}, makes the canary fail (see the module docstring).
"""

_RECORD = 2**14
"""
The most plaintext one TLS record carries: what one read from OpenSSL
returns at most, and the most each write hands it.
"""

_RECEIVED: Any = _ffi.new("char[]", _RECORD) if _ffi is not None else None
_SENT: Any = _ffi.new("char[]", 4 * _RECORD + 1024) if _ffi is not None else None
"""
What every connection decrypts into and takes its sent records from: shared,
since their bytes are copied out before anything else runs (one thread).
"""

_KEEP = 4096
"""
The most bytes a memory BIO may have held at once without being replaced by
a new one soon after: a memory BIO keeps a buffer of a third more than the
most it ever held, for as long as the connection lives.
"""

_RELEASE_AFTER = 1.0
"""
Seconds after a read or send past L{_KEEP} bytes when the memory BIOs are
replaced (if drained): at most once per period however much flows, since a
replaced BIO grows again, clearing what it frees, at about half an
instruction per byte.
"""

_LIB_NAMES = (
    "BIO_write",
    "BIO_read",
    "BIO_get_mem_data",
    "BIO_new",
    "BIO_s_mem",
    "SSL_set_bio",
    "SSL_write",
    "SSL_read",
    "SSL_pending",
    "SSL_session_reused",
)
_CONNECTION_METHODS = ("_raise_ssl_error", "_handle_bio_errors")
_CONNECTION_FIELDS = ("_ssl", "_into_ssl", "_from_ssl")
_PROTOCOL_NAMES = (
    "_write",
    "_flushSendBIO",
    "_flushReceiveBIO",
    "_bufferedWrite",
    "_tlsShutdownFinished",
    "_shutdownTLS",
    "_unbufferPendingWrites",
    "_checkHandshakeStatus",
    "_handshakeDone",
    "_lostTLSConnection",
    "_aborted",
)
"""
What the pump uses of Twisted's TLS protocol class: methods, and the flags
it declares at class level.
"""

_PROTOCOL_FIELDS = ("_tlsConnection", "_appSendBuffer")
"""
The fields Twisted's own C{makeConnection} sets, which the pump's sets in its stead.
"""

_FACTORY_FIELDS = ("_creatorCallable",)
"""
What the pump's C{makeConnection} uses of Twisted's TLS factory.
"""

_SET_GROUPS = getattr(_openssl, "SSL_CTX_set1_curves_list", None)
"""
OpenSSL's C{SSL_CTX_set1_groups_list} (named for curves in pyOpenSSL's
bindings), for which pyOpenSSL has no public call.
"""


def setGroupList(context: SSL.Context, groups: str) -> bool:
    """
    Offer the key-exchange groups C{groups} (C{"X25519:P-256"}) on a context.

    @return: whether OpenSSL took them; L{False} too when this pyOpenSSL
        has no binding for it (the context keeps OpenSSL's defaults).
    """
    raw = getattr(context, "_context", None)
    if _SET_GROUPS is None or raw is None:
        return False
    if _SET_GROUPS(raw, groups.encode("ascii")) == 1:
        return True
    _openssl.ERR_clear_error()
    return False


class RecordPump(TLSTransport):
    """
    The public TLS transport with its record path on OpenSSL's calls: the
    memory BIOs are asked how many bytes they hold before they are read
    (Twisted reads until pyOpenSSL raises C{WantReadError}, two exceptions
    per record), records are read and written with C{SSL_read} and
    C{SSL_write} without pyOpenSSL's wrappers (its error handling only when a
    call fails), and what a write made is sent at once, in one write.

    A memory BIO never shrinks: it keeps a buffer of a third more than the
    most it ever held (the server's handshake flight, or 64 KiB read at
    once).  So each step of a handshake ends with the BIOs it drained
    replaced by new, empty ones, and a read or send past L{_KEEP} bytes after
    it has them replaced L{_RELEASE_AFTER} seconds later (L{_releaseBIOs}):
    an idle connection holds only what OpenSSL needs.
    """

    def makeConnection(self, transport: Any) -> None:
        """
        Connect, with neither OpenSSL's connection made nor the handshake
        begun: Twisted's C{makeConnection} without its first steps, which
        C{ProtocolWrapper.makeConnection} repeats or undoes (it declares
        every interface of the transport one C{directlyProvides} at a time,
        each replacing the last, a tenth of a handshake's CPU; the wrapper
        declares them all again).  A server's handshake waits for the
        client's first bytes anyway, and OpenSSL's connection costs about
        16 KiB made, and 30 KiB more once its handshake has begun (its
        read and handshake buffers): a connection that never sends costs
        neither (L{__getattr__} makes the connection on first use).
        """
        self._appSendBuffer = []
        self._releaseCall: IDelayedCall | None = None
        ProtocolWrapper.makeConnection(self, transport)

    def __getattr__(self, name: str) -> Any:
        """
        OpenSSL's connection (C{_tlsConnection}), made on first use: the
        client's first bytes, C{getHandle}, a close; any other name missing
        here is the transport's, as in C{ProtocolWrapper}.
        """
        if name == "_tlsConnection":
            connection = self._tlsConnection = self.factory._creatorCallable(self)
            return connection
        return ProtocolWrapper.__getattr__(self, name)

    def dataReceived(self, data: bytes) -> None:
        """
        Feed what arrived to TLS, holding what the application writes
        meanwhile, then send that: once the handshake is done, straight into
        the receive BIO, then deliver what it decrypts.
        """
        self._receiving = True
        try:
            if self._handshakeDone:
                connection = self._tlsConnection
                written = _openssl.BIO_write(connection._into_ssl, data, len(data))
                if written < len(data):
                    connection._handle_bio_errors(connection._into_ssl, written)
                if self._appSendBuffer:
                    self._unbufferPendingWrites()
                self._flushReceiveBIO()
                if len(data) > _KEEP and self._releaseCall is None:
                    self._releaseCall = self.factory.clock.callLater(_RELEASE_AFTER, _releaseLater, self)
            else:
                TLSMemoryBIOProtocol.dataReceived(self, data)
                _releaseBIOs(self, True, True)
        finally:
            self._receiving = False
        if self._held:
            self._sendHeld()

    def sessionReused(self) -> bool:
        """
        Whether the finished handshake resumed a session: OpenSSL's
        C{SSL_session_reused}, for which pyOpenSSL has no public call.
        """
        return bool(_openssl.SSL_session_reused(self._tlsConnection._ssl))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Forget the replacement of the BIOs still to come, then lose the connection.
        """
        if self._releaseCall is not None:
            self._releaseCall.cancel()
            self._releaseCall = None
        super().connectionLost(reason)

    def _write(self, data: bytes) -> None:
        """
        Hand application bytes to OpenSSL record by record, without copies,
        and send what it made once (Twisted's slices the bytes and takes each
        record from the BIO as it is made).
        """
        if self._lostTLSConnection:
            return
        connection = self._tlsConnection
        ssl = connection._ssl
        size = len(data)
        done = 0
        pointer: Any = data if type(data) is bytes else _ffi.from_buffer(data)
        whole = None
        while done < size:
            result = _openssl.SSL_write(ssl, pointer, min(size - done, _RECORD))
            if result > 0:
                done += result
                if done < size:  # the next record starts inside the same bytes
                    if whole is None:
                        whole = _ffi.from_buffer(data)
                    pointer = whole + done
                continue
            try:
                connection._raise_ssl_error(ssl, result)
            except SSL.WantReadError:
                self._bufferedWrite(data[done:])
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
                return
            break
        self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        """
        Send what OpenSSL has made, if anything, in one write.
        """
        connection = self._tlsConnection
        pending = _openssl.BIO_get_mem_data(connection._from_ssl, _ffi.NULL)
        if pending <= 0:
            return
        transport = self.transport
        assert transport is not None
        if pending > len(_SENT):
            transport.write(connection.bio_read(pending))
        else:
            read = _openssl.BIO_read(connection._from_ssl, _SENT, pending)
            transport.write(_ffi.buffer(_SENT, read)[:])
        if pending > _KEEP and self._handshakeDone and self._releaseCall is None:
            self._releaseCall = self.factory.clock.callLater(_RELEASE_AFTER, _releaseLater, self)

    def _flushReceiveBIO(self) -> None:
        """
        Deliver the application bytes of what arrived, record by record,
        until nothing is left to decrypt; then send what reading made (a
        handshake message, an alert).  As Twisted's, with OpenSSL's
        C{SSL_read} called directly into a shared buffer, and pyOpenSSL's
        error handling only when it returns no bytes.
        """
        connection = self._tlsConnection
        ssl = connection._ssl
        while not self._lostTLSConnection:
            result = _openssl.SSL_read(ssl, _RECEIVED, _RECORD)
            if result > 0:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, _ffi.buffer(_RECEIVED, result)[:])
                if _openssl.SSL_pending(ssl) <= 0 and _openssl.BIO_get_mem_data(connection._into_ssl, _ffi.NULL) <= 0:
                    break
                continue
            try:
                connection._raise_ssl_error(ssl, result)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                # TLS has shut down (close_notify): the loss's reason comes from the transport.
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
            else:
                break
        self._flushSendBIO()


def _releaseBIOs(protocol: RecordPump, received: bool, sent: bool) -> None:
    """
    Replace a pump's memory BIO of what arrives (C{received}) and of what is
    sent (C{sent}) by new ones, each only if it holds nothing: OpenSSL's
    C{SSL_set_bio} frees the old ones, their buffers with them (it keeps
    its buffering BIO, during a handshake, in front of the new one).
    Nothing is replaced once the connection is lost (pyOpenSSL then marks
    the end of the received bytes on its BIO), nor a BIO when a new one
    cannot be made.
    """
    if protocol._lostTLSConnection:
        return
    connection = protocol._tlsConnection
    into, out = connection._into_ssl, connection._from_ssl
    if received and _openssl.BIO_get_mem_data(into, _ffi.NULL) <= 0:
        fresh = _openssl.BIO_new(_openssl.BIO_s_mem())
        into = into if fresh == _ffi.NULL else fresh
    if sent and _openssl.BIO_get_mem_data(out, _ffi.NULL) <= 0:
        fresh = _openssl.BIO_new(_openssl.BIO_s_mem())
        out = out if fresh == _ffi.NULL else fresh
    # Only a BIO that changed is taken over by OpenSSL, its old one freed.
    _openssl.SSL_set_bio(connection._ssl, into, out)
    connection._into_ssl, connection._from_ssl = into, out


def _releaseLater(protocol: RecordPump) -> None:
    """
    L{_RELEASE_AFTER} seconds after a read or send past L{_KEEP} bytes:
    replace a pump's drained memory BIOs.
    """
    protocol._releaseCall = None
    _releaseBIOs(protocol, True, True)


# The canary.


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class _Received(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


@implementer(IOpenSSLServerConnectionCreator)
class _CanaryCreator:
    def __init__(self, context: SSL.Context) -> None:
        self.context = context

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self.context, None)


@implementer(IOpenSSLClientConnectionCreator)
class _CanaryClientCreator:
    """
    The client side of the canary's connection: verifies nothing.
    """

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)


def _missingNames() -> list[str]:
    """
    The private names the pump needs that this pyOpenSSL and Twisted lack.
    """
    if _openssl is None or _ffi is None:
        return ["OpenSSL._util.ffi/lib"]
    missing = [f"OpenSSL._util.lib.{name}" for name in _LIB_NAMES if not hasattr(_openssl, name)]
    methods = _CONNECTION_METHODS + (("_netdCanaryForcedMissing",) if os.environ.get(CANARY_SWITCH) == "fail" else ())
    missing += [f"OpenSSL.SSL.Connection.{name}" for name in methods if not hasattr(SSL.Connection, name)]
    missing += [f"TLSMemoryBIOProtocol.{name}" for name in _PROTOCOL_NAMES if not hasattr(TLSMemoryBIOProtocol, name)]
    return missing


def _missingFields(factory: TLSTransportFactory, connected: TLSMemoryBIOProtocol) -> list[str]:
    """
    The private fields the pump needs that Twisted lacks: of a factory, and
    of a protocol Twisted's own C{makeConnection} connected.
    """
    missing = [f"TLSMemoryBIOFactory().{name}" for name in _FACTORY_FIELDS if not hasattr(factory, name)]
    missing += [f"TLSMemoryBIOProtocol().{name}" for name in _PROTOCOL_FIELDS if name not in vars(connected)]
    return missing


def _runCanary() -> str | None:
    """
    Check the pump against the pyOpenSSL and Twisted netd runs on: every
    private name it needs, then a real handshake in memory and a record each
    way through it.

    @return: why the pump cannot be used, or L{None} when it can.
    """
    missing = _missingNames()
    if missing:
        return "missing " + ", ".join(missing)
    pair = makeCA("netd TLS canary")
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.use_certificate(pair.certificate)
    context.use_privatekey(pair.key)
    clock = Clock()
    serverFactory = TLSTransportFactory(_CanaryCreator(context), False, Factory.forProtocol(_Echo), clock)
    serverFactory.protocol = RecordPump
    received = _Received()
    clientFactory = TLSTransportFactory(_CanaryClientCreator(), True, Factory.forProtocol(lambda: received), clock)
    clientFactory.protocol = TLSMemoryBIOProtocol  # Twisted's own, which writes at once
    server = serverFactory.buildProtocol(None)
    client = clientFactory.buildProtocol(None)
    if not isinstance(server, RecordPump) or client is None:
        return "no protocol built"
    serverTransport, clientTransport = StringTransport(), StringTransport()
    client.makeConnection(clientTransport)
    fields = _missingFields(serverFactory, client)
    if fields:
        return "missing " + ", ".join(fields)
    server.makeConnection(serverTransport)
    fields = [name for name in _CONNECTION_FIELDS if not hasattr(server._tlsConnection, name)]
    if fields:
        return "missing " + ", ".join(f"OpenSSL.SSL.Connection().{name}" for name in fields)

    def exchange(message: bytes) -> None:
        """
        Move bytes both ways until the client has its echo of C{message}, sent once its handshake is done.
        """
        received.received = b""
        sent = False
        for _ in range(8):
            if client._handshakeDone and not sent:
                client.write(message)
                sent = True
            toServer, toClient = clientTransport.value(), serverTransport.value()
            clientTransport.clear()
            serverTransport.clear()
            if toServer:
                server.dataReceived(toServer)
            if toClient:
                client.dataReceived(toClient)
            if received.received:
                return

    # Past _KEEP bytes, so that the BIOs the echo filled are replaced before the second one.
    message = b"netd canary " * (_KEEP // 8)
    exchange(message)
    if not server._handshakeDone:
        return "the handshake did not finish"
    if received.received != message:
        return f"an echo of {len(message)} bytes came back wrong: {len(received.received)} bytes"
    clock.advance(_RELEASE_AFTER)
    exchange(message)
    if received.received != message:
        return f"after its BIOs were replaced, an echo came back wrong: {len(received.received)} bytes"
    if server.sessionReused() is not False:
        return "a new session not reported as new"
    return None


def _checkPump() -> None:
    """
    The record pump's start-up check: L{_runCanary}'s verdict, raised.
    """
    why = _runCanary()
    if why is not None:
        raise CanaryFailed(why)


RECORD_PUMP = Canary(
    "TLS record pump",
    _checkPump,
    "TLS is served on Twisted's and pyOpenSSL's public API instead (correct, slower)",
)
"""
Whether TLS connections may use L{RecordPump}, asked once, when the first TLS service is built.
"""
