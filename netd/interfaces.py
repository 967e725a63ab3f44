"""
The contract between netd's core and its protocol plugins: a plugin
(L{IProtocolPlugin}) builds one handler per service, which makes an
L{IFrameReceiver} per stream connection (whole frames in, answers through an
L{IFrameConnection}) or is an L{IDatagramHandler}.  Everything between the
socket and those calls is the core's.  L{netd.bases} gives a plugin defaults;
these interfaces are what the registry checks, whatever the base.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

from netd.metrics import Counters


class EventRecorder(Protocol):
    """
    Where a plugin records its own kinds of events (the DNS proxy's
    C{"query"}): a service's L{netd.events.EventLog}, declared here by what a
    plugin uses of it so that the contract does not import the log.
    """

    enabled: bool

    def add(self, kind: str, render: Callable[..., dict[str, Any]], *args: Any) -> None:
        """
        Record one event, rendered to JSON by C{render(*args)} when it is read.
        """

    def addAt(self, time: float, kind: str, render: Callable[..., dict[str, Any]], *args: Any) -> None:
        """
        L{add}, at a C{time} the caller has just read from the log's clock.
        """


class NoEvents:
    """
    The events of a context made without a service (a plugin's unit test):
    nothing is kept.
    """

    enabled = False

    def add(self, kind: str, render: Callable[..., dict[str, Any]], *args: Any) -> None:
        """
        Keep nothing.
        """

    def addAt(self, time: float, kind: str, render: Callable[..., dict[str, Any]], *args: Any) -> None:
        """
        Keep nothing.
        """


class FrameOutlet(Protocol):
    """
    Where the frame faults' writer (L{netd.faults.frames.FrameFaultWriter})
    writes one connection's frames: the framing that encodes them, the
    transport that carries them, and the client the events name; a relaying
    plugin gives its own for the frames it sends on.

    @ivar framingName: the framing's name, for the events.
    @ivar largestClaim: the largest length the framing's prefix can state
        (L{None}: no prefix, or no bound).
    """

    framingName: str
    largestClaim: int | None

    def encodeFrame(self, frame: bytes, claimed: int | None = None) -> bytes:
        """
        The bytes of one frame on the wire, its prefix stating C{claimed} when given.

        @raise netd.stream.framing.FramingError: if the framing cannot carry it.
        """

    def write(self, data: bytes) -> None:
        """
        Write encoded bytes (a frame, a piece of one, or several).
        """

    def loseConnection(self) -> None:
        """
        Close the connection, after what was written.
        """

    def holdBack(self, holding: bool) -> None:
        """
        The writer holds more than it may (C{holding}), or again little
        enough: pause (or resume) what feeds it.
        """

    def getPeer(self) -> IAddress:
        """
        The client's address, for the events.
        """


class RelayedFrameWriter(Protocol):
    """
    The writer of the frames a relaying plugin sends on, once frame faults
    have touched them (L{netd.faults.frames.FrameFaultWriter}).
    """

    def sendFrame(self, frame: bytes) -> None:
        """
        Send one frame through the faults that apply to it, in order behind those held.
        """

    def afterHeld(self, action: Callable[[], None]) -> None:
        """
        Call C{action} once every frame held back has been written (a half-close).
        """

    def loseConnection(self) -> None:
        """
        Close the connection once every frame held back has been written.
        """

    def stop(self) -> None:
        """
        The connection is lost: drop what is held, cancel the timers.
        """


class RelayedFrameFaults(Protocol):
    """
    A service's C{from_client} frame faults, as a plugin that sends the
    client's frames on sees them (L{netd.faults.frames.FrameFaultSet}).

    @ivar inForce: whether there are any (read per frame).
    """

    inForce: bool

    def writerTo(self, outlet: FrameOutlet, clock: IReactorTime) -> RelayedFrameWriter:
        """
        A writer of frames to C{outlet} from now on.
        """


@attrs.frozen
class PluginContext:
    """
    What the core gives a plugin to build one service's handler with.

    @ivar reactor: the reactor to listen, connect and schedule with (tests pass a
        fake one, so plugins never import the global reactor).
    @ivar log: a logger named after the service (L{netd.logs.ServiceLogger}).
    @ivar serviceName: the service's C{name}.
    @ivar counters: the service's counters; a plugin adds its own names.
    @ivar events: the service's recent events (L{netd.events.EventLog}), where a
        plugin records its own kinds; a context made without one keeps none.
    @ivar framing: the service's stream framing (a name of
        L{netd.stream.framing.FRAMINGS}), for a plugin that frames a
        connection of its own the same way (the proxy's upstream); L{None}
        when the service serves no streams.
    @ivar maxFrame: the service's C{max_frame}; L{None} with raw framing.
    @ivar relayedFrameFaults: the service's C{from_client} frame faults, for a
        plugin that sends the client's frames on to a server of its own
        (one that declares C{relaysFrames}): each such frame goes through a
        writer of theirs (C{writerTo}) while they are in force; L{None}:
        none are kept.
    """

    reactor: Any
    log: Logger
    serviceName: str
    counters: Counters
    events: EventRecorder = attrs.field(factory=NoEvents)
    framing: str | None = "raw"
    maxFrame: int | None = None
    relayedFrameFaults: RelayedFrameFaults | None = None


class IProtocolPlugin(Interface):
    """
    A protocol netd can serve; found among the built-ins or through the
    C{netd.plugins} entry-point group.

    One optional attribute, read where present: C{relaysFrames}, L{True}
    when the plugin sends the client's frames on to a server of its own
    through L{PluginContext.relayedFrameFaults}, so that its services take
    C{from_client} frame faults (L{False}, the default of
    L{netd.bases.Plugin}, refuses them).
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
    requiresTLS = Attribute(
        "True when every service of the plugin must have a tls table (its streams are TLS only); "
        "False (the default of netd.bases.Plugin) leaves TLS to the service's config."
    )

    def build(options: Any, context: PluginContext) -> Any:
        """
        Make the handler of one configured service from its validated options and
        a L{PluginContext}.  It must provide L{IStreamHandler} if the
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
        The connection is open (over TLS: its handshake is done; a connection
        whose handshake fails never reaches its receiver); frames are sent
        back through C{connection}.
        """

    def frameReceived(frame: bytes) -> None:
        """
        One complete frame arrived (with C{raw} framing: whatever bytes arrived).
        """

    def connectionLost(reason: Failure) -> None:
        """
        The connection is gone, with a L{twisted.python.failure.Failure} saying why.
        """


class IPacedConnection(Interface):
    """
    An optional extra of an L{IFrameConnection}, for a plugin that relays a
    connection's bytes to another one (the proxy): reading paused and resumed
    on demand, a producer paced by the connection's send buffer, half-close
    and reset.  The core's stream connections provide it; check with
    C{IPacedConnection.providedBy}.
    """

    def pauseReading() -> None:
        """
        Stop reading from the peer until L{resumeReading}.
        """

    def resumeReading() -> None:
        """
        Read from the peer again.
        """

    def registerProducer(producer: Any, streaming: bool) -> None:
        """
        Pace C{producer} (an L{twisted.internet.interfaces.IPushProducer})
        by this connection's send buffer: paused while it is full.  It
        replaces the connection's own pacing (reading from the peer paused
        while its send buffer is full) until L{unregisterProducer}.
        """

    def unregisterProducer() -> None:
        """
        Stop pacing the producer; the connection paces itself again.
        """

    def loseWriteConnection() -> None:
        """
        Send EOF once what was sent is written, and keep reading.
        """

    def resetConnection() -> None:
        """
        End the connection with a TCP reset.
        """


class IServerTLSTransport(Interface):
    """
    The server side of a service's TLS, under its framing: it tells a
    protocol above it that L{IAwaitsHandshake} when the handshake is done,
    and the framing introduces the plugin's receiver then, so that a client
    whose handshake fails never reaches the plugin.  Client-side TLS (an
    upstream a plugin dials) is not one: its plugin meets the connection as
    it opens.
    """

    def getHandle() -> Any:
        """
        The pyOpenSSL connection.
        """

    def handshakePending() -> bool:
        """
        Whether the client's handshake has not finished: not yet, or never
        (it failed).  Asked without making OpenSSL's connection, which a
        server makes only once the client sends something.
        """


class IAwaitsHandshake(Interface):
    """
    A protocol above an L{IServerTLSTransport} that waits for its handshake.
    Not Twisted's C{IHandshakeListener}: Twisted's client endpoints wrap a
    protocol in one that re-declares the interfaces it proxies one
    C{directlyProvides} at a time, each replacing the last, so a framing
    providing both that and C{IHalfCloseableProtocol} would lose half-close
    on every upstream connection a plugin dials.
    """

    def handshakeCompleted() -> None:
        """
        The TLS handshake is done; no data has been delivered yet.
        """


class IHalfCloseableReceiver(Interface):
    """
    An optional extra of an L{IFrameReceiver}: told of the peer's EOF while
    the connection stays open for sending, instead of the core closing it.
    """

    def readConnectionLost() -> None:
        """
        The peer sent EOF; the receiver closes the connection when it is done.
        """


class IExactFrames(Interface):
    """
    An optional extra of an L{IFrameReceiver} that relays frames to another
    connection (the proxy): each frame it receives keeps every byte of the
    wire but the framing's own, so that encoding it again gives back the
    bytes received.  Only line framing differs: a CR before the LF stays in
    the frame, and a frame sent may end in CR (it goes out as CR LF).
    """


class IConnectionEventFields(Interface):
    """
    An optional extra of an L{IFrameReceiver}: fields of its own for the
    core's C{"connection"} event of its connection (a proxy's upstream
    address and bytes), read once, when the connection has closed and the
    receiver has been told (after its C{connectionLost}).
    """

    def eventFields() -> Mapping[str, Any]:
        """
        JSON-ready fields added to the connection's event; the core's own
        fields (C{peer}, C{ended}, ...) are never replaced by them.
        """


class IFramingViolationReceiver(Interface):
    """
    An optional extra of an L{IFrameReceiver}: ends its connection its own
    way when the peer breaks the framing (the proxy resets both sides when
    its upstream does), where the core would close it.  The core has
    counted (C{frames_rejected}) and logged the violation already.
    """

    def framingViolated(reason: str) -> None:
        """
        The peer broke the framing, for C{reason}; the receiver ends the connection.
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
