"""
What netd's two reactors (L{netd.reactors.epoll}, L{netd.reactors.uv}) share,
and what the rest of netd knows of them: the marker of a netd reactor, the
metered transport, and TCP listening with a port class of the reactor's own.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.interfaces import IReactorFDSet
from zope.interface import Attribute, Interface, implementer


class INetdReactor(Interface):
    """
    A reactor of netd's own (L{netd.reactors.epoll.NetdReactor},
    L{netd.reactors.uv.UvloopReactor}): its C{udp:} listeners read and send in
    batches (L{netd.reactors.udp}), where Twisted's reactor, which
    C{NETD_REACTOR=twisted} chooses to rule netd's own code out, keeps
    Twisted's UDP port.
    """


class IMeteredTransport(Interface):
    """
    A stream transport that counts its own traffic.

    The counts are of bytes on the wire (TLS records, not their contents), as
    they are read and as they are written (queued or sent).
    """

    bytesReceived = Attribute("Bytes read from the peer so far.")
    bytesSent = Attribute("Bytes written to the peer so far.")
    lastActivity = Attribute(
        "When bytes last moved either way (or the transport was made), in the reactor's C{seconds()}: "
        "on netd's epoll reactor the time the reactor's turn that moved them began (L{NetdReactor.turnTime}); "
        "on its uvloop one, as the kernel tells (L{netd.reactors.uv.StreamConnection.lastActivity})."
    )


TCP_PORT_PRIVATES = "_fromListeningDescriptor"
"""
The private name of Twisted's C{tcp.Port} that L{ServesTCPPorts} uses: each
reactor's canary checks it.
"""


class ServesTCPPorts:
    """
    Mixed into netd's reactors, before Twisted's: their TCP listeners
    (C{listenTCP}: the C{tcp:} and C{tcp6:} endpoints; C{adoptStreamPort}:
    the C{systemd:} one) are their own port class, L{tcpPort}, whose
    connections are their own transports.
    """

    tcpPort: Any

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        """
        Listen on a TCP port of the reactor's own class.
        """
        listening = self.tcpPort(port, factory, backlog, interface, self)
        listening.startListening()
        return listening

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: int, factory: Any) -> Any:
        """
        Listen on an inherited socket (systemd socket activation): a TCP one
        as a port of the reactor's own class, any other as Twisted does.
        """
        if addressFamily not in (socket.AF_INET, socket.AF_INET6):
            return super().adoptStreamPort(fileDescriptor, addressFamily, factory)  # type: ignore[misc]
        listening = self.tcpPort._fromListeningDescriptor(self, fileDescriptor, addressFamily, factory)
        listening.startListening()
        return listening


@implementer(IReactorFDSet)
class UnwatchedReactor:
    """
    The reactor of the transports and ports a check makes: it watches
    nothing, as the check reads and writes them by hand.
    """

    def addReader(self, reader: Any) -> None:
        """
        Watch nothing.
        """

    def removeReader(self, reader: Any) -> None:
        """
        Watch nothing.
        """

    def addWriter(self, writer: Any) -> None:
        """
        Watch nothing.
        """

    def removeWriter(self, writer: Any) -> None:
        """
        Watch nothing.
        """

    def removeAll(self) -> list[Any]:
        """
        Nothing was watched.
        """
        return []

    def getReaders(self) -> list[Any]:
        """
        Nothing is watched.
        """
        return []

    def getWriters(self) -> list[Any]:
        """
        Nothing is watched.
        """
        return []
