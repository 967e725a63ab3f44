"""
Structural tests of what a new stream connection costs: the work that only an
event reader, a debug log or the idle timeout needs is not done when nothing
will read it, and what a service's connections share is made once.  (The cost
itself is counted in instructions by bench/echo/callgrind.py --mode connrate,
not timed here.)
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import Interface, alsoProvides, implementer

from netd.events import EventLog
from netd.reactors import tcpinfo
from netd.reactors.uv import TCPPort, UvloopReactor
from netd.stream.declared import provides
from netd.stream.guard import ConnectionLimiter
from netd.testing.memory import PEER, makeStreamStack
from netd_plugins.echo import EchoHandler

from .privatereactor import spin, uvloopReactor  # noqa: F401
from .test_reactor import Recording, accept


class AskedTransport(StringTransport):
    """
    A transport that counts how often its addresses are asked for.
    """

    def __init__(self) -> None:
        super().__init__(peerAddress=PEER)
        self.asked = 0

    def getPeer(self) -> Any:
        self.asked += 1
        return super().getPeer()

    def getHost(self) -> Any:
        self.asked += 1
        return super().getHost()


def openAndClose(limiter: ConnectionLimiter) -> AskedTransport:
    """
    One connection through C{limiter}'s stack: open, one echo, closed by the peer.
    """
    protocol = limiter.buildProtocol(PEER)
    assert protocol is not None
    transport = AskedTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"ping")
    assert transport.value() == b"ping"
    protocol.connectionLost()
    return transport


def test_eventsOffAskNoAddresses() -> None:
    """
    With the service's event log off, a connection's life asks its transport for no address and records nothing.
    """
    events = EventLog(0, MemoryReactorClock())
    limiter = makeStreamStack(EchoHandler(), "raw", events=events)
    transport = openAndClose(limiter)
    assert transport.asked == 0
    assert events.events() == []


def test_eventsOnAskEachAddressOnce() -> None:
    """
    With the event log on, the two addresses are asked for once, at the opening, and the connection's event names them.
    """
    events = EventLog(10, MemoryReactorClock())
    limiter = makeStreamStack(EchoHandler(), "raw", events=events)
    transport = openAndClose(limiter)
    assert transport.asked == 2
    [event] = events.events(kind="connection")
    assert event["peer"] == f"{PEER.host}:{PEER.port}"
    assert (event["bytes_in"], event["bytes_out"], event["ended"]) == (4, 4, "closed by peer")


def test_noIdleTimeoutWatchesNothing() -> None:
    """
    With idle_timeout 0 the stack has no idle watch and its connections are not watched.
    """
    limiter = makeStreamStack(EchoHandler(), "raw", idleTimeout=0)
    assert limiter.idle is None
    protocol = limiter.buildProtocol(PEER)
    assert protocol is not None
    protocol.makeConnection(StringTransport(peerAddress=PEER))
    assert not protocol._watched  # type: ignore[attr-defined]


def test_uvloopConnectionsShareTheirPortsAddress(uvloopReactor: UvloopReactor) -> None:  # noqa: F811
    """
    A uvloop port bound to one address gives its connections its own address object as their local one, not one each.
    """
    factory = Recording()
    port = uvloopReactor.listenTCP(0, factory, interface="127.0.0.1")
    assert isinstance(port, TCPPort) and port.connectionHost is port.getHost()
    clients = [socket.create_connection(("127.0.0.1", port.getHost().port)) for _ in range(2)]
    spin(uvloopReactor, lambda: len(factory.made) == 2)
    hosts = [made.transport.getHost() for made in factory.made]
    assert hosts[0] is hosts[1] is port.getHost()
    for client in clients:
        client.close()
    port.stopListening()


def test_uvloopWildcardPortAsksEachConnection(uvloopReactor: UvloopReactor) -> None:  # noqa: F811
    """
    On a wildcard address the port shares none, and each connection's local address is the one the kernel gave it.
    """
    factory = Recording()
    port = uvloopReactor.listenTCP(0, factory, interface="0.0.0.0")
    assert isinstance(port, TCPPort) and port.connectionHost is None
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    spin(uvloopReactor, lambda: factory.made)
    assert factory.made[0].transport.getHost() == IPv4Address("TCP", "127.0.0.1", port.getHost().port)
    client.close()
    port.stopListening()


def test_uvloopCloseReadsNoTCPInfo(uvloopReactor: UvloopReactor, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """
    A uvloop connection that the peer closes is lost without a TCP_INFO read: only the idle timeout asks for one.
    (The start-up check's own read, on its probe socket, is done before counting.)
    """
    assert tcpinfo.CANARY.alive()
    reads: list[object] = []
    real = tcpinfo.millisecondsSinceData
    monkeypatch.setattr(tcpinfo, "millisecondsSinceData", lambda sock: reads.append(sock) or real(sock))
    accepted = accept(uvloopReactor)
    accepted.client.close()
    spin(uvloopReactor, lambda: accepted.protocol.lost)
    assert reads == []


class IAsked(Interface):
    """
    An interface for L{provides} to be asked about.
    """


@implementer(IAsked)
class Declaring:
    """
    A class that implements L{IAsked}.
    """


class Silent:
    """
    A class that declares nothing.
    """


@pytest.mark.parametrize(
    "make", [Declaring, Silent, lambda: directlyProvided(Silent()), lambda: directlyProvided(Declaring())]
)
def test_providesAnswersAsZope(make: Any) -> None:
    """
    provides gives zope.interface's answer, for instances that declare nothing of their own (asked twice: once found, once cached) and for ones that do.
    """
    for _ in range(2):
        instance = make()
        assert provides(IAsked, instance) is IAsked.providedBy(instance)


def directlyProvided(instance: object) -> object:
    """
    C{instance}, declared to provide L{IAsked} on its own.
    """
    alsoProvides(instance, IAsked)
    return instance
