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
    On the record pump, a second after a read or send past 4 KiB, the memory
    BIOs are new ones (a memory BIO keeps a buffer for the most it ever
    held), once however many such records flowed in that second; small
    records keep them.  Echoes of every size come back whole on both paths,
    and the public path keeps its BIOs.
    """
    stack = echoStack(tlsOptions(certs))
    connection = stack.connect(TestClientTLS(maxVersion=version))
    assert connection.handshakeDone
    first = memoryBIOs(connection)
    for sizes in [(1, 100, 4000), (65536, 5000, 1), (200_000,), (10,)]:
        before = memoryBIOs(connection)
        for size in sizes:
            message = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            connection.send(message)
            assert connection.takeReceived() == message
            assert memoryBIOs(connection) == before
        stack.clock.advance(pump._RELEASE_AFTER)
        after = memoryBIOs(connection)
        # Past 4 KiB of plaintext: its record adds under 100 bytes.
        replaced = bothRecordPaths == "pump" and max(sizes) > pump._KEEP
        assert after[0] != before[0] and after[1] != before[1] if replaced else after == before
    assert (memoryBIOs(connection) == first) is (bothRecordPaths == "twisted")
    assert not stack.clock.getDelayedCalls()


def test_handshakeBIOsReplaced(certs: Certs, bothRecordPaths: str) -> None:
    """
    On the record pump, each step of a handshake ends with the memory BIOs
    it drained replaced: the ones that held the ClientHello and the server's
    flight are gone once it is answered (the public path keeps them).
    """
    stack = echoStack(tlsOptions(certs))
    connection = connect(stack.limiter)
    assert connection is not None
    hello = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    hello.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        hello.do_handshake()
    protocol = tlsProtocol(connection)
    handle = protocol.getHandle()  # made now, before the ClientHello
    made = handle._into_ssl, handle._from_ssl
    connection.receive(hello.bio_read(65536))
    assert connection.takeSent()[:1] == b"\x16"
    now = handle._into_ssl, handle._from_ssl
    if bothRecordPaths == "pump":
        assert now[0] != made[0] and now[1] != made[1]
    else:
        assert now == made


def test_closedBeforeReplacement(certs: Certs, bothRecordPaths: str) -> None:
    """
    A connection lost before its BIOs' replacement (on the record pump)
    leaves no call behind.
    """
    stack = echoStack(tlsOptions(certs))
    connection = stack.connect(TestClientTLS())
    connection.send(b"x" * 10_000)
    assert bool(stack.clock.getDelayedCalls()) is (bothRecordPaths == "pump")
    connection.close()
    assert connection.lost is not None
    assert not stack.clock.getDelayedCalls()
