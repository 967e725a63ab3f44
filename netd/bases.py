"""
Base classes a plugin starts from, so that a small one is a few lines.

L{Plugin} gives the plugin interface's optional attributes their defaults
(C{requiresTLS}, C{relaysFrames}, no options); L{StreamPlugin} is a plugin serving streams
with one L{FrameReceiver} subclass per connection, which only says what to
do with a frame.  The interfaces themselves are in L{netd.interfaces}: a
plugin that does not start from these classes declares everything itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import attrs
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.interfaces import IFrameConnection, IFrameReceiver, IProtocolPlugin, IStreamHandler, PluginContext


@attrs.frozen
class NoOptions:
    """
    No keys of its own: the core's keys say it all.
    """


@implementer(IProtocolPlugin)
class Plugin(ABC):
    """
    The defaults of a plugin's optional attributes; a subclass sets C{name},
    C{summary}, C{transports}, C{framings} where it serves streams, and
    defines C{build}.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    transports: ClassVar[frozenset[str]]
    optionsType: ClassVar[type] = NoOptions
    framings: ClassVar[tuple[str, ...]] = ()
    requiresTLS: ClassVar[bool] = False
    relaysFrames: ClassVar[bool] = False

    @abstractmethod
    def build(self, options: Any, context: PluginContext) -> Any:
        """
        The handler of one service; see L{IProtocolPlugin.build}.
        """


@implementer(IFrameReceiver)
class FrameReceiver(ABC):
    """
    One stream connection, for a subclass that defines C{frameReceived} and
    answers through C{self.connection.sendFrame}.

    @ivar connection: the connection, from C{connectionMade} until it is lost.
    """

    connection: IFrameConnection

    @abstractmethod
    def frameReceived(self, frame: bytes) -> None:
        """
        One complete frame arrived; see L{IFrameReceiver.frameReceived}.
        """

    def connectionMade(self, connection: IFrameConnection) -> None:
        """
        Keep the connection to answer through.
        """
        self.connection = connection

    def connectionLost(self, reason: Failure) -> None:
        """
        Let go of the connection, which points back at this receiver, so that
        a closed one is freed at once rather than by the cycle collector.
        """
        vars(self).pop("connection", None)


@implementer(IStreamHandler)
@attrs.frozen
class StreamHandler:
    """
    A service's stream handler that gives each connection a new C{receiverType}.
    """

    receiverType: type[FrameReceiver]

    def newConnection(self) -> FrameReceiver:
        """
        A receiver for a new connection.
        """
        return self.receiverType()


class StreamPlugin(Plugin):
    """
    A plugin serving streams only, with a new C{receiverType} per connection;
    a subclass sets C{name}, C{summary}, C{framings} and C{receiverType}.
    """

    transports = frozenset({"stream"})
    receiverType: ClassVar[type[FrameReceiver]]

    def build(self, options: Any, context: PluginContext) -> StreamHandler:
        """
        The handler of one service: a receiver per connection.
        """
        return StreamHandler(self.receiverType)
