"""
Echo (RFC 862): every frame or datagram is sent back to where it came from,
re-encoded in the service's framing (C{raw}: the bytes as they came).

Over UDP an echo is a reflector, so a datagram is echoed only from a source
port of C{min_source_port} or above and within C{rate} a second per source
address (L{netd.datagram.listener.SourceRateLimit}); the README tells why.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.logger import Logger
from zope.interface import implementer

from netd.bases import FrameReceiver, Plugin
from netd.config.options import between, option
from netd.datagram.listener import SourceRateLimit
from netd.faults.datagrams import describeDatagramPeer
from netd.interfaces import IDatagramHandler, IDatagramSender, IStreamHandler, PluginContext
from netd.metrics import Counters
from netd.stream.framing import FRAMINGS

DROP_LOG_INTERVAL = 10.0
"""
Seconds between two log lines about datagrams not echoed: the first is logged
at once, the others within this time are summed up in the next line.
"""


@attrs.frozen
class EchoOptions:
    """
    Echo's own keys guard its UDP side; over streams the core's framing,
    limits and listen say it all.
    """

    min_source_port: int = option(
        1024,
        help="Datagrams from a lower source port are not echoed (counted as datagrams_low_source_port): "
        "services answer from ports below 1024, so an echo to one starts a loop; 1 echoes every port.",
        checks=(between(1, 65535),),
    )
    rate: float = option(
        1000.0,
        help="Datagrams echoed to one source address per second, on average (a token bucket); "
        "more are dropped and counted as datagrams_rate_limited; 0 sets no limit.",
        checks=(between(0, 10_000_000),),
    )
    burst: int = option(
        1000,
        help="Datagrams one source address may have echoed at once, above rate.",
        checks=(between(1, 10_000_000),),
    )


class EchoReceiver(FrameReceiver):
    """
    One echo connection: each frame is sent straight back (on why through a
    method of its own, see the design note of docs/writing-a-plugin.md).
    """

    def frameReceived(self, frame: bytes) -> None:
        """
        Send the frame back.
        """
        self.connection.sendFrame(frame)


class EchoGuard:
    """
    Which datagrams an echo answers (see the module docstring): those from a
    source port of C{min_source_port} or above, within C{rate} a second per
    source address.  The others are counted, and logged at most every
    L{DROP_LOG_INTERVAL} seconds with the count since the last line.
    """

    def __init__(self, options: EchoOptions, context: PluginContext) -> None:
        self.minSourcePort = options.min_source_port
        self.limit = SourceRateLimit(options.rate, options.burst, context.reactor) if options.rate else None
        self.counters: Counters = context.counters
        self.log: Logger = context.log
        self._clock = context.reactor
        self._dropsSince = 0
        self._dropLogged: float | None = None

    def admits(self, peer: Any) -> bool:
        """
        Whether to echo a datagram from C{peer}; counted and logged if not.
        """
        if peer[1] < self.minSourcePort:
            self._dropped("datagrams_low_source_port", peer, "its source port is below min_source_port")
            return False
        if self.limit is not None and not self.limit.allows(peer[0]):
            self._dropped("datagrams_rate_limited", peer, "its source address is over the rate")
            return False
        return True

    def _dropped(self, counter: str, peer: Any, why: str) -> None:
        """
        Count a datagram not echoed, and log it: at once when no line was
        written in the last L{DROP_LOG_INTERVAL} seconds, else in the next
        line's count.
        """
        self.counters[counter] += 1
        self._dropsSince += 1
        now = self._clock.seconds()
        if self._dropLogged is not None and now - self._dropLogged < DROP_LOG_INTERVAL:
            return
        self.log.warn(
            "not echoing a datagram from {peer}: {why}; {count} not echoed since the last such line",
            peer=describeDatagramPeer(peer),
            why=why,
            count=self._dropsSince,
            event="datagram_not_echoed",
        )
        self._dropsSince = 0
        self._dropLogged = now


@implementer(IStreamHandler, IDatagramHandler)
class EchoHandler:
    """
    The echo service: a receiver per stream connection, and datagrams sent
    back to the sources its C{guard} admits (to every source without one:
    tls-echo serves only streams).
    """

    def __init__(self, guard: EchoGuard | None = None) -> None:
        self.guard = guard

    def newConnection(self) -> EchoReceiver:
        """
        A receiver for a new connection.
        """
        return EchoReceiver()

    def datagramReceived(self, datagram: bytes, peer: Any, sender: IDatagramSender) -> None:
        """
        Send the datagram back to its sender, if the guard admits it.
        """
        guard = self.guard
        if guard is not None and not guard.admits(peer):
            return
        sender.sendDatagram(datagram, peer)


class EchoPlugin(Plugin):
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
        The echo handler, with its UDP guards from the options, timed by the
        context's reactor.
        """
        return EchoHandler(EchoGuard(options, context))


plugin = EchoPlugin()
