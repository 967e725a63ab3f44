"""
What keeps an idle or stalled TLS connection small (docs/performance.md,
"Memory per TLS connection"): every server context netd makes releases
OpenSSL's record buffers while a connection is idle, and on the record pump
a connection that has sent nothing holds no OpenSSL connection at all (about
16 KiB, and 30 KiB more once a handshake has begun), and the memory BIOs
that held a handshake's messages or a large read or send are replaced by new
ones once drained.  On both record paths, the handshake a silent connection
then makes, and the framing's wait for it, are unchanged.
"""

from __future__ import annotations

from typing import Any

import pytest
from OpenSSL import SSL
from twisted.logger import Logger

from netd.testing.memory import MemoryStreamConnection, TestClientTLS, TLSTestConnection, connect
from netd.tls import pump
from netd.tls.contexts import ServerTLS
from netd.tls.options import SNICertificate
from netd.tls.protocol import TLSServerProtocol

from .test_tls import (  # noqa: F401  (fixtures, used by name)
    Certs,
    bothRecordPaths,
    certs,
    debugLogging,
    echoStack,
    tlsCounters,
    tlsOptions,
    verifying,
)


def releasesBuffers(context: SSL.Context) -> bool:
    """
    Whether a context has OpenSSL's C{SSL_MODE_RELEASE_BUFFERS} (C{set_mode}
    adds to the modes and returns them all: adding none reads them).
    """
    return bool(context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS)


def serverContexts(tls: ServerTLS) -> list[SSL.Context]:
    """
    The contexts a service's TLS serves from now: the default one and one per C{sni} name.
    """
    return [tls.defaultContext, *tls.contexts.values()]


def tlsProtocol(connection: MemoryStreamConnection) -> TLSServerProtocol:
    """
    The TLS server protocol inside a connection's stack.
    """
    protocol: Any = connection.protocol
    while not isinstance(protocol, TLSServerProtocol):
        protocol = protocol.wrappedProtocol
    return protocol


def test_everyServerContextReleasesBuffers(certs: Certs) -> None:
    """
    The default context, each SNI one, those made for new session-ticket
    keys and those of reloaded files all release OpenSSL's buffers while idle.
    """
    alpha = certs.extra("alpha")
    options = tlsOptions(certs, sni={"alpha.test": SNICertificate(certificate=alpha[0], private_key=alpha[1])})
    tls = ServerTLS(options, serviceName="memory", log=Logger())
    made = serverContexts(tls)
    tls.rotateSessionKeys()
    made += serverContexts(tls)
    tls.adopt(tls.reloadFiles())
    made += serverContexts(tls)
    assert len({id(context) for context in made}) == 6
    assert all(releasesBuffers(context) for context in made)


def test_silentConnectionHoldsNoOpenSSLConnection(certs: Certs, bothRecordPaths: str) -> None:
    """
    On the record pump, a connection that has sent nothing has no OpenSSL
    connection yet (the public path makes it at once, as Twisted does); on
    both, its handshake is pending, and its ClientHello then starts a
    handshake that is answered.
    """
    stack = echoStack(tlsOptions(certs))
    connection = connect(stack.limiter)
    assert connection is not None
    protocol = tlsProtocol(connection)
    assert ("_tlsConnection" in vars(protocol)) is (bothRecordPaths == "twisted")
    assert protocol.handshakePending()
    assert connection.takeSent() == b""
    hello = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    hello.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        hello.do_handshake()
    connection.receive(hello.bio_read(65536))
    assert protocol.getHandle() is not None
    assert connection.takeSent()[:1] == b"\x16"  # the server's handshake records
    assert protocol.handshakePending()


def test_handshakePendingAfterFailure(certs: Certs) -> None:
    """
    A handshake that failed (bytes that are not TLS) stays pending: the
    framing never introduces the plugin to that client.
    """
    stack = echoStack(tlsOptions(certs))
    connection = connect(stack.limiter)
    assert connection is not None
    protocol = tlsProtocol(connection)
    connection.receive(b"GET / HTTP/1.1\r\n\r\n")
    connection.finishClose()
    assert protocol.tlsDetails is not None and protocol.tlsDetails["failure"] == "not_tls"
    assert protocol.handshakePending()


def test_silentConnectionClosesCleanly(certs: Certs) -> None:
    """
    A connection closed by its peer before sending anything is counted as an
    aborted handshake, as before, without an error logged.
    """
    stack = echoStack(tlsOptions(certs))
    connection = connect(stack.limiter)
    assert connection is not None
    connection.peerClosed()
    assert tlsCounters(stack.counters) == {"tls_handshakes_failed_aborted": 1}


def memoryBIOs(connection: TLSTestConnection) -> tuple[Any, Any]:
    """
    The memory BIOs under a test connection's server side: what arrives, what is sent.
    """
    protocol: Any = connection.server
    while not isinstance(protocol, TLSServerProtocol):
        protocol = protocol.wrappedProtocol
    handle = protocol.getHandle()
    return handle._into_ssl, handle._from_ssl


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_drainedBIOsReplaced(certs: Certs, bothRecordPaths: str, version: str) -> None:
    """
    On the record pump, the memory BIOs that held the handshake, and each
    that held more than 4 KiB at once after it, are new ones once drained (a
    memory BIO keeps a buffer for the most it ever held); small records keep
    them.  Echoes of every size come back whole on both paths, before and
    after, and the public path keeps its BIOs.
    """
    stack = echoStack(tlsOptions(certs))
    connection = stack.connect(TestClientTLS(maxVersion=version))
    assert connection.handshakeDone
    first = memoryBIOs(connection)
    for size in (1, 100, 4000, 65536, 5000, 1, 200_000, 10):
        message = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        before = memoryBIOs(connection)
        connection.send(message)
        assert connection.takeReceived() == message
        after = memoryBIOs(connection)
        if bothRecordPaths == "twisted":
            assert after == first
        else:
            replaced = size > pump._KEEP  # a record adds under 100 bytes
            assert (after[0] != before[0], after[1] != before[1]) == (replaced, replaced), size
    if bothRecordPaths == "pump":
        assert connection.lost is None
