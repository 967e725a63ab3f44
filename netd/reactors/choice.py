"""
The reactor C{netd run} runs on, as C{NETD_REACTOR} names it: netd's uvloop
reactor by default (L{netd.reactors.uv}), netd's epoll reactor
(L{netd.reactors.epoll}), or Twisted's default reactor, to rule netd's own
reactors out when chasing a bug.  Each of netd's reactors falls back to the
next when its start-up check fails (uvloop to epoll, epoll to Twisted's).
"""

from __future__ import annotations

import os
import sys

REACTORS = ("uvloop", "netd", "twisted")
"""
The values of C{NETD_REACTOR}, the default first.
"""


def installReactor(environ: dict[str, str] | None = None) -> str:
    """
    Install the reactor that C{NETD_REACTOR} names, or the one it falls back
    to, unless one is installed already (by twistd, or by a program that runs
    netd inside its own).

    @param environ: where to read C{NETD_REACTOR} (the process environment
        by default).
    @return: the name of the reactor installed, or C{"preinstalled"}.
    @raise ValueError: for a value that names no reactor, saying which do.
    """
    choice = (os.environ if environ is None else environ).get("NETD_REACTOR", REACTORS[0]) or REACTORS[0]
    if choice not in REACTORS:
        raise ValueError(f"NETD_REACTOR={choice!r} names no reactor; use one of: {', '.join(REACTORS)}")
    if "twisted.internet.reactor" in sys.modules:
        return "preinstalled"
    if choice == "uvloop":
        from netd.reactors import uv

        return uv.install()
    if choice == "netd":
        from netd.reactors import epoll

        return epoll.install()
    from twisted.internet import default

    default.install()
    return "twisted"
