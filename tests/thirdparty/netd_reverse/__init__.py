"""
An example third-party netd plugin: each frame comes back reversed, with an
optional prefix.  It serves streams only, so a C{udp:} listen address is refused.

It uses only what C{netd} itself exports (the public plugin API), as a
package of its own would.
"""

from __future__ import annotations

import attrs
from zope.interface import implementer

from netd import FrameReceiver, IStreamHandler, Plugin, PluginContext, between, option


@attrs.frozen
class ReverseOptions:
    """
    The plugin's own keys.
    """

    prefix: str = option("", help="Text put before every reversed frame.")
    repeat: int = option(1, help="How many times each reversed frame is sent.", checks=(between(1, 10),))


class ReverseReceiver(FrameReceiver):
    """
    One connection: frames come back reversed.
    """

    def __init__(self, options: ReverseOptions, context: PluginContext) -> None:
        self.options = options
        self.context = context

    def frameReceived(self, frame: bytes) -> None:
        """
        Send the frame back reversed, C{repeat} times, and count it.
        """
        self.context.counters["frames_reversed"] += 1
        for _ in range(self.options.repeat):
            self.connection.sendFrame(self.options.prefix.encode() + frame[::-1])


@implementer(IStreamHandler)
class ReverseHandler:
    """
    The service: one receiver per connection.
    """

    def __init__(self, options: ReverseOptions, context: PluginContext) -> None:
        self.options = options
        self.context = context

    def newConnection(self) -> ReverseReceiver:
        """
        A receiver for a new connection.
        """
        return ReverseReceiver(self.options, self.context)


class ReversePlugin(Plugin):
    """
    The C{reverse} plugin.
    """

    name = "reverse"
    summary = "sends every frame back reversed (example third-party plugin)"
    optionsType = ReverseOptions
    transports = frozenset({"stream"})
    framings = ("line", "netstring", "u16", "u32")

    def build(self, options: ReverseOptions, context: PluginContext) -> ReverseHandler:
        """
        The service's handler.
        """
        return ReverseHandler(options, context)


plugin = ReversePlugin()
