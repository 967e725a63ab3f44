"""
TCP ports that run out of descriptors without spinning (L{AcceptingPort}):
the port of netd's epoll reactor, and of Twisted's own reactor when netd runs
on it (L{acceptGuarded}).

The accepting loop is Twisted's C{tcp.Port.doRead} rewritten, so it uses
C{tcp.Port}'s internals (C{numberAccepts}, C{sessionno}, C{_addressType},
C{transport}) and the standard library's C{socket.socket._accept}, which
accepts without making a socket object for a connection that is refused.
L{CANARY} checks them at start-up; if it fails, Twisted's reactor listens
with Twisted's own port.
"""

from __future__ import annotations

import socket
from errno import ECONNABORTED, EINTR, EMFILE, ENFILE, EPERM, errorcode
from typing import Any

from twisted.internet import tcp
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger
from twisted.python import log
from twisted.python.failure import Failure

from netd.canary import Canary, require, requireNames
from netd.reactors.rlimits import nextPause, reportOutOfDescriptors
from netd.reactors.shared import INetdReactor

_log = Logger(namespace="netd.reactors.accepting")


class AcceptingPort(tcp.Port):
    """
    A listening TCP port whose accepting loop runs out of descriptors
    without spinning: on C{EMFILE} or C{ENFILE} it stops accepting for a
    moment (10 ms, doubling while it lasts, up to a second, as nginx pauses
    its accept events), and tells the service, which counts and logs it and
    may close its stalest connection (L{reportOutOfDescriptors}).  The
    connections that arrive meanwhile wait in the listen queue.

    Twisted's port closes a reserved descriptor and accepts and closes every
    waiting connection instead (resetting the clients that a moment later
    would have been served), and once that reserve is gone logs and retries
    on every turn of the reactor, as the listening socket stays readable: a
    spin.  netd's epoll reactor listens with this port (L{netd.reactors.epoll.Port}, with its
    own connections), and Twisted's reactor too when netd runs on it
    (L{acceptGuarded}, with Twisted's connections); the uvloop reactor's
    port, where libuv accepts, has its own way (L{netd.reactors.uv.TCPPort}).
    """

    transport: Any = tcp.Server
    _acceptPause: Any = None
    _pauseLength = 0.0

    def startListening(self) -> None:
        """
        Listen, and note what the accepting loop needs of the socket.
        """
        super().startListening()
        listening: Any = self.socket
        self._acceptFrom = (listening._accept, int(listening.family), int(listening.type), listening.proto)

    def doRead(self) -> None:
        """
        Accept what is waiting (up to L{tcp.Port.numberAccepts} at a time,
        scaled as Twisted does) and start each connection, as
        L{tcp.Port.doRead} does, without its per-call log buffering and
        generator.  Out of descriptors, pause (see the class's docstring);
        another accept error than "nothing waiting" is logged and ends this
        round, as Twisted's loop does.
        """
        acceptOne, family, kind, proto = self._acceptFrom
        factory = self.factory
        assert factory is not None
        buildAddress = self._addressType
        accepted = 0
        try:
            for accepted in range(1, self.numberAccepts + 1):
                try:
                    fd, addr = acceptOne()
                except BlockingIOError:
                    accepted -= 1
                    break
                except OSError as e:
                    accepted -= 1
                    if e.errno in (EMFILE, ENFILE):
                        self._outOfDescriptors(e)
                        return
                    if e.errno in (ECONNABORTED, EPERM, EINTR):
                        continue
                    _log.info("could not accept a connection ({error})", error=errorcode.get(e.errno or 0, str(e)))
                    break
                self._pauseLength = 0.0
                skt = socket.socket(family, kind, proto, fileno=fd)
                if len(addr) == 4:
                    host = socket.getnameinfo(addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
                    addr = (host[0], *addr[1:])
                peer = buildAddress("TCP", *addr)
                protocol = factory.buildProtocol(peer)
                if protocol is None:
                    skt.close()
                    continue
                session = self.sessionno
                self.sessionno = session + 1
                transport = self.transport(skt, protocol, addr, self, session, self.reactor)
                transport._peer = peer
                protocol.makeConnection(transport)
            if accepted == self.numberAccepts:
                self.numberAccepts += 20
            else:
                self.numberAccepts = max(1, accepted)
        except BaseException:
            log.deferr()

    def _outOfDescriptors(self, error: OSError) -> None:
        """
        Stop accepting for a moment, and tell the service.
        """
        self._pauseLength = nextPause(self._pauseLength)
        self.stopReading()
        clock: Any = self.reactor
        self._acceptPause = clock.callLater(self._pauseLength, self._resumeAccepting)
        reportOutOfDescriptors(self.factory, error)

    def _resumeAccepting(self) -> None:
        """
        Accept again after a pause, unless the port stopped meanwhile.
        """
        self._acceptPause = None
        if self.connected and not self.disconnecting:
            self.startReading()

    def connectionLost(self, reason: Failure) -> None:
        """
        Stop listening as Twisted's port does, and forget a pause under way.
        """
        if self._acceptPause is not None:
            self._acceptPause.cancel()
            self._acceptPause = None
        super().connectionLost(reason)


class _AcceptGuardedReactor:
    """
    Twisted's reactor as an endpoint sees it, whose C{listenTCP} and
    C{adoptStreamPort} listen with an L{AcceptingPort}: what netd's listeners get on Twisted's own
    reactor, so that running out of descriptors is handled there too.
    Everything else is the reactor's.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> AcceptingPort:
        """
        Listen on a TCP port whose accepting loop pauses when out of descriptors.
        """
        listening = AcceptingPort(port, factory, backlog, interface, self._reactor)
        listening.startListening()
        return listening

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: int, factory: Any) -> Any:
        """
        Listen on a bound TCP socket (C{reuseport=yes}, socket activation)
        with an L{AcceptingPort}; any other as the reactor does.
        """
        if addressFamily not in (socket.AF_INET, socket.AF_INET6):
            return self._reactor.adoptStreamPort(fileDescriptor, addressFamily, factory)
        listening = AcceptingPort._fromListeningDescriptor(self._reactor, fileDescriptor, addressFamily, factory)
        listening.startListening()
        return listening

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


def acceptGuarded(reactor: Any) -> Any:
    """
    The reactor to make listening endpoints with: netd's own as it is (its
    ports are L{AcceptingPort}s already), Twisted's polling reactors with
    their C{listenTCP} giving one (L{_AcceptGuardedReactor}) unless
    L{CANARY} failed, any other (a test's fake) as it is.
    """
    if INetdReactor.providedBy(reactor) or not isinstance(reactor, PosixReactorBase) or not CANARY.alive():
        return reactor
    return _AcceptGuardedReactor(reactor)


def _check() -> None:
    """
    The names the accepting loop takes from C{tcp.Port} are there, and
    C{socket.socket._accept} accepts a waiting connection as a descriptor
    and an address.
    """
    requireNames(
        tcp.Port,
        "_addressType _fromListeningDescriptor sessionno transport startListening connectionLost",
        "twisted's tcp.Port",
    )
    require(
        "numberAccepts" in tcp.Port.startListening.__code__.co_names, "tcp.Port.startListening to set numberAccepts"
    )
    listener: Any = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname(), timeout=1):
            fd, addr = listener._accept()
            socket.close(fd)
        require(isinstance(fd, int) and isinstance(addr, tuple) and len(addr) == 2, "socket._accept() -> (fd, address)")
    finally:
        listener.close()


CANARY = Canary("accepting port", _check, "Twisted's reactor listens with Twisted's own TCP port")
