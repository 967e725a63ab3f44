"""
netd's reactors for twistd: C{twistd --reactor=netd-uvloop -n netd -c FILE}
runs netd under twistd on the reactor C{netd run} uses by default
(L{netd.reactors.uv}), C{--reactor=netd} on netd's epoll reactor
(L{netd.reactors.epoll}); each installs the next (uvloop's the epoll one, the
epoll one Twisted's default) when its start-up check of the private names it
uses fails.

Like C{netd_plugin.py}, a drop-in found by Twisted's scan of every
C{twisted/plugins} folder on the path.
"""

from twisted.application.reactors import Reactor

netd = Reactor(
    "netd",
    "netd.reactors.epoll",
    "netd's epoll reactor: TCP writes sent at once, events handled without a logging context each",
)

netdUvloop = Reactor(
    "netd-uvloop",
    "netd.reactors.uv",
    "netd's default reactor: Twisted's asyncio reactor on uvloop, TCP connections served by uvloop's transports",
)
