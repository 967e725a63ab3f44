"""
HTTP to the control API over a unix socket, for the clients netd ships:
C{netd health} (L{netd.daemon.probe}) and the test harness
(L{netd.testing.harness}), which must stay light, so this module imports
the standard library only.
"""

from __future__ import annotations

import http.client
import socket


class UnixHTTPConnection(http.client.HTTPConnection):
    """
    HTTP over a unix socket (the standard library's client speaks it over
    TCP only), for C{admin = "unix:PATH"}: here and in the test harness.
    """

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socketPath = path

    def connect(self) -> None:
        """
        Open the socket file instead of a TCP connection.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socketPath)
        except OSError:
            sock.close()
            raise
        self.sock = sock
