"""
Echo (RFC 862): every frame or datagram is sent back to where it came from.

Over streams it works with every framing: with C{raw} the bytes go back as they
came, with any other framing each frame goes back re-encoded.  The core's flow
control keeps a client that sends without reading from making netd buffer
without bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.framing import FRAMINGS
from netd.interfaces import (
    IDatagramHandler,
    IDatagramSender,
    IFrameConnection,
    IFrameReceiver,
    IProtocolPlugin,
    IStreamHandler,
)
from netd.plugin import PluginContext


@attrs.frozen
class EchoOptions:
    """
    Echo has no keys of its own: the core's framing, limits and listen say it all.
    """


@implementer(IFrameReceiver)
class EchoReceiver:
    """
    One echo connection: each frame is sent straight back.

    @ivar frameReceived: the connection's C{sendFrame} itself, once the
        connection is made: echoing a frame is sending it, and a call of
        the receiver's own in between would only cost time per frame.
    """

    frameReceived: Callable[[bytes], None]

    def connectionMade(self, connection: IFrameConnection) -> None:
        """
        Echo each frame from now on by sending it on C{connection}.
        """
        self.frameReceived = connection.sendFrame

    def connectionLost(self, reason: Failure) -> None:
        """
        Let go of the connection (its bound C{sendFrame}), so that nothing
        keeps the two alive in a cycle once it is closed.  (A TLS
        connection whose handshake failed ends here without having been
        made.)
        """
        self.__dict__.pop("frameReceived", None)


@implementer(IStreamHandler, IDatagramHandler)
class EchoHandler:
    """
    The echo service: a receiver per stream connection, and datagrams sent back.
    """

    def newConnection(self) -> EchoReceiver:
        """
        A receiver for a new connection.
        """
        return EchoReceiver()

    def datagramReceived(self, datagram: bytes, peer: Any, sender: IDatagramSender) -> None:
        """
        Send the datagram back to its sender.
        """
        sender.sendDatagram(datagram, peer)


@implementer(IProtocolPlugin)
class EchoPlugin:
    """
    The C{echo} plugin.
    """

    name = "echo"
    summary = "RFC 862 echo: sends back every frame (any framing) or datagram"
    optionsType = EchoOptions
    transports = frozenset({"stream", "datagram"})
    framings = tuple(FRAMINGS)

    def build(self, options: EchoOptions, context: PluginContext) -> EchoHandler:
        """
        The echo handler; it needs nothing from the options or the context.
        """
        return EchoHandler()


plugin = EchoPlugin()
