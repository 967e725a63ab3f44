"""
Testing with netd.  L{netd.testing.harness} runs netd as a child process for
a test suite (C{NetdServer}, C{AdminClient}; the C{netd_server} fixture of
L{netd.testing.pytest_plugin} is built on it); L{netd.testing.memory} runs a
plugin behind the real core layers on in-memory transports.

This package offers the harness's names: they import only the standard
library, as the pytest plugin, loaded into every test session wherever netd
is installed, must.  Import the in-memory kit from L{netd.testing.memory}.
"""

from netd.testing.harness import AdminClient, AdminError, NetdServer, NetdStartError, netdCommand, unavailable

__all__ = ["AdminClient", "AdminError", "NetdServer", "NetdStartError", "netdCommand", "unavailable"]
