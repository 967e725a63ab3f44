"""
Listening on a port that other processes share (C{SO_REUSEPORT}): the
C{reuseport=yes} of C{tcp:}, C{tcp6:} and C{udp:} listen strings, by which
several netds started from one config each listen on the same port, and the
kernel spreads new connections and datagrams over them.

The option has to be set on the socket before it is bound, and no reactor
netd runs on (uvloop, netd's epoll reactor, Twisted's) takes it.  So netd
makes, configures and binds the socket here, and hands it to the reactor
through Twisted's public C{IReactorSocket} (C{adoptStreamPort},
C{adoptDatagramPort}), which every one of them provides, each with its own
port class (L{netd.reactors.shared.ServesTCPPorts}); a C{udp:} listener on
netd's reactors keeps its batching port (L{adoptBatchingUDP}).

Linux lets a socket join a port's group only if every socket in it set the
option and belongs to the same effective user, so another user's process
cannot take a share of the traffic.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.protocol import DatagramProtocol

from netd.reactors.shared import INetdReactor
from netd.reactors.udp import CANARY as BATCHING_CANARY
from netd.reactors.udp import adoptBatchingUDP


def sharedSocket(kind: int, interface: str, port: int, backlog: int = 0, family: int | None = None) -> socket.socket:
    """
    A non-blocking socket with C{SO_REUSEPORT} set, bound to C{interface} and
    C{port} (and, for a stream socket, listening with C{backlog}), as
    Twisted's ports bind theirs (C{SO_REUSEADDR} on a TCP one).

    @param kind: C{SOCK_STREAM} or C{SOCK_DGRAM}.
    @param interface: an IP address literal, or C{""} for every IPv4 one.
    @param family: the address family; by default, that of C{interface}.
    @raise CannotListenError: when the socket cannot be made or bound.
    """
    if family is None:
        family = socket.AF_INET6 if interface and ipaddress.ip_address(interface).version == 6 else socket.AF_INET
    try:
        shared = socket.socket(family, kind)
    except OSError as e:
        raise CannotListenError(interface, port, e) from None
    try:
        if kind == socket.SOCK_STREAM:
            shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        shared.bind((interface, port))
        if kind == socket.SOCK_STREAM:
            shared.listen(backlog)
        shared.setblocking(False)
    except OSError as e:
        shared.close()
        raise CannotListenError(interface, port, e) from None
    return shared


def listenSharedTCP(
    reactor: Any, factory: IProtocolFactory, port: int, interface: str, backlog: int, family: int
) -> IListeningPort:
    """
    Listen on a TCP port shared with other processes, with the reactor's own
    port class (adopted: the reactor keeps a copy of the socket, this one is
    closed).

    @raise CannotListenError: when the bind fails.
    """
    with sharedSocket(socket.SOCK_STREAM, interface, port, backlog, family) as shared:
        listening: IListeningPort = reactor.adoptStreamPort(shared.fileno(), shared.family, factory)
    return listening


def listenSharedUDP(
    reactor: Any, protocol: DatagramProtocol, port: int, interface: str, maxPacketSize: int
) -> IListeningPort:
    """
    Bind a UDP port shared with other processes: a batching port on netd's
    reactors where its start-up check passes, the reactor's own otherwise
    (as L{netd.config.listen.ListenAddress.listenDatagram} chooses).

    @raise CannotListenError: when the bind fails.
    """
    with sharedSocket(socket.SOCK_DGRAM, interface, port) as shared:
        if INetdReactor.providedBy(reactor) and BATCHING_CANARY.alive():
            return adoptBatchingUDP(reactor, shared.fileno(), shared.family, protocol, maxPacketSize)
        listening: IListeningPort = reactor.adoptDatagramPort(shared.fileno(), shared.family, protocol, maxPacketSize)
    return listening
