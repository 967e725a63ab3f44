"""
The contract between netd's core and its protocol plugins.

A plugin (L{IProtocolPlugin}) declares its name, its options schema and the
transports it serves, and builds one handler per configured service.  For
streams the handler makes an L{IFrameReceiver} per connection, which sees whole
frames (the core does the framing) and answers through an L{IFrameConnection};
for datagrams the handler itself is an L{IDatagramHandler}.  Everything between
the socket and those calls (listening, limits, idle timeouts, framing, TLS,
faults, counters) is the core's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IAddress
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from netd.registry import PluginContext


class IProtocolPlugin(Interface):
    """
    A protocol netd can serve; found among the built-ins or through the
    C{netd.plugins} entry-point group.
    """

    name = Attribute("The value of a service's C{plugin} key: lowercase, no spaces.")
    summary = Attribute("One line saying what the plugin serves.")
    optionsType = Attribute(
        "A frozen attrs class whose fields (declared with netd.config.options.option) are the "
        "plugin's own config keys; it is the plugin's schema."
    )
    transports = Attribute("A frozenset of the transports served: 'stream', 'datagram'.")
    framings = Attribute(
        "The stream framings the plugin accepts (names from netd.stream.framing.FRAMINGS), the "
        "default first; empty when it serves no streams."
    )

    def build(options: Any, context: PluginContext) -> Any:
        """
        Make the handler of one configured service from its validated options and
        a L{netd.registry.PluginContext}.  It must provide L{IStreamHandler} if the
        plugin serves streams and L{IDatagramHandler} if it serves datagrams.
        A handler with work of its own to start and stop (timers, upstream
        connections) also provides L{twisted.application.service.IService}: it
        is started once the service listens and stopped after the service has
        drained.
        """


class IFrameConnection(Interface):
    """
    One stream connection, as a frame receiver sees it.
    """

    def sendFrame(frame: bytes) -> None:
        """
        Encode a frame with the connection's framing and send it.

        @raise netd.stream.framing.FramingError: if the framing cannot carry it.
        """

    def loseConnection() -> None:
        """
        Close the connection once what was sent has been written.
        """

    def getPeer() -> IAddress:
        """
        The remote address.
        """

    def getHost() -> IAddress:
        """
        The local address.
        """


class IFrameReceiver(Interface):
    """
    A plugin's side of one stream connection.
    """

    def connectionMade(connection: IFrameConnection) -> None:
        """
        The connection is open; frames are sent back through C{connection}.
        """

    def frameReceived(frame: bytes) -> None:
        """
        One complete frame arrived (with C{raw} framing: whatever bytes arrived).
        """

    def connectionLost(reason: Failure) -> None:
        """
        The connection is gone, with a L{twisted.python.failure.Failure} saying why.
        """


class IStreamHandler(Interface):
    """
    What a plugin's handler provides to serve streams.
    """

    def newConnection() -> IFrameReceiver:
        """
        Make the receiver of one newly accepted connection.
        """


class IDatagramSender(Interface):
    """
    The socket a datagram arrived on, for sending answers back.
    """

    def sendDatagram(datagram: bytes, peer: tuple[str, int]) -> None:
        """
        Send one datagram to C{peer}.
        """


class IDatagramHandler(Interface):
    """
    What a plugin's handler provides to serve datagrams.
    """

    def datagramReceived(datagram: bytes, peer: tuple[str, int], sender: IDatagramSender) -> None:
        """
        One datagram arrived from C{peer}; answers go out through C{sender}.
        """


class IReportsStatus(Interface):
    """
    An optional extra of a plugin's handler: a report of its own state, shown
    per service by the control API's C{GET /services} (the DNS proxy reports
    its upstreams' health).
    """

    def status() -> dict[str, Any]:
        """
        The handler's state as a JSON-ready mapping; called on each request, so
        it must be cheap and must not block.
        """


class IRuntimeTable(Interface):
    """
    A piece of a service's state that the control API reads and changes while
    netd runs, at C{/services/NAME/TABLE}: the core's C{faults} and C{events},
    a plugin's own (the DNS proxy's C{records} and C{scripts}).

    Bodies and answers are JSON-ready values.  A method a table does not take
    raises L{NotImplementedError} (the API answers 405).
    """

    def get(query: Mapping[str, Sequence[str]]) -> Mapping[str, Any]:
        """
        C{GET}: the table's current content, filtered by the URL's query arguments
        where the table takes some.
        """

    def put(body: Any) -> Mapping[str, Any]:
        """
        C{PUT}: apply a change; the answer says what the table holds now.

        @raise netd.config.options.ConfigError: the body is invalid (the API answers
            400 with every problem, each with its key path inside the body);
            nothing was changed.
        """

    def delete(query: Mapping[str, Sequence[str]]) -> Mapping[str, Any]:
        """
        C{DELETE}: remove what the query arguments name, or everything the
        table says it resets to without any.
        """


class IHasRuntimeTables(Interface):
    """
    An optional extra of a plugin's handler: tables the control API exposes
    beside the core's ones.
    """

    def runtimeTables() -> Mapping[str, IRuntimeTable]:
        """
        The handler's tables by URL segment (C{"records"}: C{/services/NAME/records}).
        """
