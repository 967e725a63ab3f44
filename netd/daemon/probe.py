"""
C{netd health}: ask a running netd's control API whether it is alive
(C{GET /health}) or ready (C{GET /ready}).

A container image has no curl, and the address to ask is the one the config's
C{[daemon] admin} listens on, so the probe reads the same config as C{netd run}
and speaks plain blocking HTTP from the standard library: it runs once per
check and exits, with no reactor to start.
"""

from __future__ import annotations

import http.client

import attrs

from netd.config.listen import splitDescription, unixSocketPath
from netd.daemon.unixhttp import UnixHTTPConnection

_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}
"""
Where to reach a port listening on every address: its own loopback address.
"""


class ProbeError(Exception):
    """
    The control API cannot be asked: there is none, or its address is not
    one a probe can know before netd starts.
    """


@attrs.frozen
class ProbeTarget:
    """
    Where the control API listens, as a client connects to it.

    @ivar host: the address to connect to, for TCP.
    @ivar port: the TCP port.
    @ivar path: the socket file, for a C{unix:} control API (then C{host} is
        unused and the request's C{Host} is C{localhost}).
    """

    host: str = "localhost"
    port: int = 0
    path: str | None = None

    @classmethod
    def fromListen(cls, text: str) -> ProbeTarget:
        """
        The target of a control API listening on the stream listen string C{text}.

        @raise ProbeError: for an address no client can know in advance (port
            0, a socket systemd passes) or that is not a plain TCP or unix one.
        """
        path = unixSocketPath(text)
        if path is not None:
            return cls(path=path)
        kind, *arguments = splitDescription(text)
        if kind not in ("tcp", "tcp6"):
            raise ProbeError(f"the control API listens on {text!r}; netd health asks a tcp:, tcp6: or unix: one")
        keywords = dict(a.split("=", 1) for a in arguments if "=" in a)
        positional = [a for a in arguments if "=" not in a]
        port = int(keywords.get("port", positional[0] if positional else "0"))
        if port == 0:
            raise ProbeError(f"the control API listens on {text!r}, a port picked at start; give it a fixed port")
        interface = keywords.get("interface", "::" if kind == "tcp6" else "")
        return cls(host=_WILDCARDS.get(interface, interface), port=port)

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        """
        An unopened HTTP connection to the control API.
        """
        if self.path is None:
            return http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        return UnixHTTPConnection(self.path, timeout)

    def describe(self) -> str:
        """
        The target as a message names it.
        """
        return self.path if self.path is not None else f"{self.host}:{self.port}"


def probe(target: ProbeTarget, path: str, timeout: float) -> tuple[int, str]:
    """
    C{GET path} from the control API.

    @return: the status code and the body (its first 4 KiB) on one line.
    @raise OSError: when it cannot be reached or does not answer in time.
    """
    connection = target.connect(timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read(4096).decode("utf-8", "replace")
    except http.client.HTTPException as e:
        raise OSError(f"{target.describe()}: not an HTTP answer: {e!r}") from None
    except OSError as e:
        raise OSError(f"{target.describe()}: {e.strerror or e}") from None
    finally:
        connection.close()
    return response.status, " ".join(body.split())
