"""
The twistd drop-in of netd: C{twistd netd -c FILE} (see L{netd.daemon.tap}).

This folder has no C{__init__.py} on purpose: C{twisted.plugins} belongs to
Twisted, which finds this file by scanning every C{twisted/plugins} folder on
the path.
"""

from twisted.application.service import ServiceMaker

netd = ServiceMaker(
    "netd",
    "netd.daemon.tap",
    "Run network protocol services (echo, DNS proxy, TLS echo, ...) from one TOML file.",
    "netd",
)
