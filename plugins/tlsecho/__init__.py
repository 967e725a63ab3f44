"""
TLS echo: the echo of L{netd_plugins.echo} behind TLS, with TLS required.

The core terminates TLS (the service's C{tls} table, L{netd.tls.protocol}); this
plugin only declares that it serves nothing without it (C{requiresTLS}), so a
service of it without a C{tls} table is refused when the config is loaded.
Each frame that arrives through TLS goes back through TLS, in every framing;
there is no UDP (DTLS is not offered).
"""

from __future__ import annotations

import attrs

from netd.bases import Plugin
from netd.interfaces import PluginContext
from netd.stream.framing import FRAMINGS

from ..echo import EchoHandler


@attrs.frozen
class TLSEchoOptions:
    """
    TLS echo has no keys of its own: the core's C{tls} table, framing, limits
    and listen say it all.
    """


class TLSEchoPlugin(Plugin):
    """
    The C{tls-echo} plugin.
    """

    name = "tls-echo"
    summary = "echo behind TLS (a tls table is required): sends back every frame, any framing"
    optionsType = TLSEchoOptions
    transports = frozenset({"stream"})
    framings = tuple(FRAMINGS)
    requiresTLS = True

    def build(self, options: TLSEchoOptions, context: PluginContext) -> EchoHandler:
        """
        The echo handler: TLS is the core's, so the echo is the plain one.
        """
        return EchoHandler()


plugin = TLSEchoPlugin()
