"""
Listen strings: which ones are valid, and turning them into listening ports.

Stream listen strings are Twisted endpoint strings (C{tcp:}, C{tcp6:}, C{unix:},
C{systemd:}, C{haproxy:} in front of any of them, ...), checked by Twisted's own parser when the config is read and
listened on through the endpoint at start.  Twisted has no UDP endpoints, so
C{udp:PORT[:interface=ADDR]} is netd's own, written in the same grammar.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from typing import Any, ClassVar, Literal

import attrs
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.protocol import DatagramProtocol

from netd.config.options import InvalidValue, resolvePath
from netd.reactors.accepting import acceptGuarded
from netd.reactors.reuseport import listenSharedTCP, listenSharedUDP
from netd.reactors.rlimits import systemBacklog
from netd.reactors.shared import INetdReactor
from netd.reactors.udp import CANARY as BATCHING_CANARY
from netd.reactors.udp import listenBatchingUDP
from netd.stream.proxyheader import DEFAULT_TRUSTED_SOURCES, ProxyHeaderFactory, TrustedSources

Transport = Literal["stream", "datagram"]

_NO_REACTOR: Any = None
"""
Stands in for the reactor while only a description is being checked: Twisted's
parsers store the reactor in the endpoint without using it, and the endpoint made
at that point is thrown away.
"""

MAX_DATAGRAM = 65535
"""
The largest UDP datagram read whole (Twisted's default of 8192 would cut longer
ones short).
"""

_PORT_PREFIXES = frozenset({"tcp", "tcp6", "ssl", "udp"})
"""
Endpoint types whose first argument is a port number.
"""

NO_INHERITED_SOCKET = (
    "systemd passed no such socket: netd was not started by socket activation (a .socket unit, or "
    "systemd-socket-activate), or the socket unit passes fewer sockets or other names"
)
"""
The reason given when a C{systemd:} listen string finds no passed socket.
"""


def splitDescription(text: str) -> list[str]:
    """
    Split an endpoint description at the colons that are not escaped with a
    backslash, as Twisted's endpoint grammar does (C{interface=\\:\\:1}).
    """
    parts = [""]
    chars = iter(text)
    for char in chars:
        if char == "\\":
            parts[-1] += next(chars, "")
        elif char == ":":
            parts.append("")
        else:
            parts[-1] += char
    return parts


_PATH_ARGUMENTS = {
    "unix": ("address",),
    "ssl": ("privateKey", "certKey", "extraCertChain", "caCertsDir", "dhParameters"),
}
"""
The endpoint arguments that name files, by endpoint type, which a config
file's folder places (L{resolveEndpointPaths}); a C{unix:} socket's path is
also its first positional argument.
"""


def _rawParts(text: str) -> list[str]:
    """
    Split an endpoint description at its unescaped colons, keeping the
    escapes (unlike L{splitDescription}), so that the parts not changed can
    be joined back as written.
    """
    parts = [""]
    chars = iter(text)
    for char in chars:
        if char == "\\":
            parts[-1] += char + next(chars, "")
        elif char == ":":
            parts.append("")
        else:
            parts[-1] += char
    return parts


def _unescape(raw: str) -> str:
    """
    An argument of an endpoint description (a part of L{_rawParts}, which
    holds no unescaped colon) without its backslash escapes.
    """
    return splitDescription(raw)[0]


def _escape(text: str) -> str:
    """
    An argument as an endpoint description writes it: backslash, colon and
    equals sign escaped (Twisted's grammar).
    """
    return "".join("\\" + c if c in "\\:=" else c for c in text)


def _splitKeyword(raw: str) -> tuple[str, str] | None:
    """
    C{(key, raw value)} of an argument C{key=value} (at its first unescaped
    equals sign), or L{None} for a positional argument.
    """
    escaped = False
    for i, char in enumerate(raw):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "=":
            return _unescape(raw[:i]), raw[i + 1 :]
    return None


def resolveEndpointPaths(text: str) -> str:
    """
    A stream endpoint description with the relative file paths of its
    arguments (a C{unix:} socket's path, positional or C{address=}; the files
    of C{ssl:}; inside C{haproxy:} too) resolved from the config file's
    folder (L{resolvePath}), escaped again for Twisted's grammar.  Arguments
    that are not paths, or are already absolute, stay as written.
    """
    parts = _rawParts(text)
    if parts[0] == "haproxy" and len(parts) > 1:
        return "haproxy:" + resolveEndpointPaths(text.partition(":")[2])
    names = _PATH_ARGUMENTS.get(parts[0])
    if names is None:
        return text
    positional = 0
    for i, raw in enumerate(parts[1:], start=1):
        keyword = _splitKeyword(raw)
        if keyword is None:
            isPath, prefix, value = parts[0] == "unix" and positional == 0, "", raw
            positional += 1
        else:
            key, value = keyword
            isPath, prefix = key in names, raw[: len(raw) - len(value)]
        path = _unescape(value)
        if isPath and path and not path.startswith("\0") and resolvePath(path) != path:
            parts[i] = prefix + _escape(resolvePath(path))
    return ":".join(parts)


def unixSocketPath(text: str) -> str | None:
    """
    The socket file a C{unix:} stream endpoint (bare or inside C{haproxy:})
    listens on; L{None} for other endpoints.
    """
    parts = _rawParts(text)
    if parts[0] == "haproxy" and len(parts) > 1:
        return unixSocketPath(text.partition(":")[2])
    if parts[0] != "unix":
        return None
    keywords = [k for k in map(_splitKeyword, parts[1:]) if k is not None and k[0] == "address"]
    positional = [raw for raw in parts[1:] if _splitKeyword(raw) is None]
    raw = keywords[0][1] if keywords else positional[0] if positional else ""
    return _unescape(raw) or None


def listensOnUnixSocket(text: str) -> bool:
    """
    Whether a stream listen string listens on a unix socket (whose file mode
    guards it): C{unix:}, or a C{systemd:} socket of C{domain=UNIX}.
    """
    kind, *rest = splitDescription(text)
    return kind == "unix" or (kind == "systemd" and "domain=UNIX" in rest)


def _checkPort(text: str) -> int:
    """
    Parse a port number, 0 meaning "let the system pick one".
    """
    try:
        port = int(text)
    except ValueError:
        raise InvalidValue(f"port {text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise InvalidValue(f"port {port} is out of range; expected 0 to 65535 (0 picks a free port)")
    return port


def _checkInterface(text: str, version: int | None) -> str:
    """
    Check that an C{interface=} value is an IP address literal of the right family.
    """
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidValue(f"interface {text!r} is not an IP address") from None
    if version is not None and address.version != version:
        raise InvalidValue(f"interface {text!r} is not an IPv{version} address")
    return text


_BACKLOG_PREFIXES = frozenset({"tcp", "tcp6", "unix", "ssl"})
"""
Endpoint types that take C{backlog=N}, and get the system's when they do not
set it (L{ListenAddress.listenStream}).
"""


def _checkBacklog(kind: str, text: str) -> int:
    """
    Check a C{backlog=N} value: a number from 1 to 65535, on an endpoint that listens itself.
    """
    if kind == "systemd":
        raise InvalidValue("backlog= does not apply: systemd listens on the socket; set Backlog= in its .socket unit")
    try:
        backlog = int(text)
    except ValueError:
        raise InvalidValue(f"backlog {text!r} is not a number") from None
    if not 1 <= backlog <= 65535:
        raise InvalidValue(f"backlog {backlog} is out of range; expected 1 to 65535")
    return backlog


def withBacklog(text: str) -> str:
    """
    A stream endpoint string with C{backlog=} set: as written when it sets
    one or its type takes none, else with the system's (L{systemBacklog}),
    where Twisted's endpoints would listen with a backlog of 50.
    """
    parts = splitDescription(text)
    if parts[0] not in _BACKLOG_PREFIXES or any(part.startswith("backlog=") for part in parts[1:]):
        return text
    return f"{text}:backlog={systemBacklog()}"


_REUSEPORT_PREFIXES = frozenset({"tcp", "tcp6", "udp"})
"""
Endpoint types that take C{reuseport=yes} (L{netd.reactors.reuseport}).
"""


def _checkReusePort(kind: str, text: str) -> bool:
    """
    Check a C{reuseport=} value: C{yes} or C{no}, on C{tcp:}, C{tcp6:} or C{udp:}.
    """
    if kind == "systemd":
        raise InvalidValue("reuseport= does not apply: systemd makes the socket; set ReusePort=yes in its .socket unit")
    if kind not in _REUSEPORT_PREFIXES:
        raise InvalidValue(f"reuseport= applies to tcp:, tcp6: and udp: listen strings, not {kind}:")
    if text not in ("yes", "no"):
        raise InvalidValue(f"reuseport={text!r}; expected reuseport=yes or reuseport=no")
    return text == "yes"


def withoutReusePort(text: str) -> str:
    """
    A stream listen string without its C{reuseport=} argument, which
    Twisted's endpoint parser does not know.
    """
    return ":".join(part for part in _rawParts(text) if not part.startswith("reuseport="))


def _checkSystemd(keywords: dict[str, str]) -> None:
    """
    Check the arguments of a C{systemd:domain=INET:index=N} (or
    C{systemd:domain=INET:name=NAME}) endpoint string.
    """
    if keywords.get("domain") not in ("INET", "INET6", "UNIX"):
        raise InvalidValue("expected domain=INET, domain=INET6 or domain=UNIX")
    if "name" in keywords and "index" not in keywords:
        if not keywords["name"]:
            raise InvalidValue("expected name=NAME, the FileDescriptorName= of the socket systemd passes")
        return
    if not keywords.get("index", "").isdigit() or "name" in keywords:
        raise InvalidValue(
            "expected index=N, the position of the socket among those systemd passes, "
            "or name=NAME, its FileDescriptorName="
        )


@attrs.frozen
class ListenAddress:
    """
    One validated listen string.

    @ivar text: the string as written in the config.
    @ivar transport: C{"stream"} for endpoint strings, C{"datagram"} for C{udp:}.
    @ivar port: the UDP port (0 picks one); unused for streams.
    @ivar interface: the UDP interface address; unused for streams.
    @ivar reusePort: whether the port is shared with other processes
        (C{reuseport=yes}, on C{tcp:}, C{tcp6:}, C{udp:}, or inside C{haproxy:}).
    """

    text: str
    transport: Transport
    port: int = 0
    interface: str = ""
    reusePort: bool = False

    configTypeName: ClassVar[str] = (
        "a listen string such as 'tcp:7007:interface=127.0.0.1', 'unix:/run/netd.sock' or 'udp:7007'"
    )
    configJsonSchema: ClassVar[dict[str, Any]] = {"type": "string", "pattern": "^[a-z][a-z0-9]*:"}

    @classmethod
    def fromConfig(cls, value: object) -> ListenAddress:
        """
        Validate a listen string from the config.

        @raise InvalidValue: naming what is wrong with it.
        """
        if not isinstance(value, str):
            raise InvalidValue(f"expected {cls.configTypeName}, got {value!r}")
        value = resolveEndpointPaths(value)
        parts = splitDescription(value)
        kind = parts[0]
        if kind == "udp":
            return cls._parseUDP(value, parts[1:])
        if kind == "haproxy":
            return cls._parseProxied(value)
        keywords = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        try:
            if "backlog" in keywords:
                _checkBacklog(kind, keywords["backlog"])
            if "reuseport" in keywords:
                _checkReusePort(kind, keywords["reuseport"])
            if kind in _PORT_PREFIXES:
                positional = [p for p in parts[1:] if "=" not in p]
                _checkPort(keywords.get("port", positional[0] if positional else ""))
                if keywords.get("interface"):
                    _checkInterface(keywords["interface"], 6 if kind == "tcp6" else None)
            if kind == "systemd":
                # Twisted's systemd parser looks the inherited socket up while
                # parsing, which only works under socket activation: check the
                # arguments here and let the lookup happen at listen time.
                _checkSystemd(keywords)
                return cls(text=value, transport="stream")
        except InvalidValue as e:
            raise InvalidValue(f"{value!r}: {e}") from None
        try:
            serverFromString(_NO_REACTOR, withoutReusePort(value))
        except Exception as e:
            raise InvalidValue(f"{value!r} is not a valid endpoint string: {e}") from None
        return cls(text=value, transport="stream", reusePort=keywords.get("reuseport") == "yes")

    @classmethod
    def _parseProxied(cls, text: str) -> ListenAddress:
        """
        Check C{haproxy:ENDPOINT}: the PROXY protocol (v1 or v2) in front of a
        stream endpoint, itself checked as a listen string.
        """
        inner = text.partition(":")[2]
        if not inner:
            raise InvalidValue(f"{text!r} lacks an endpoint; expected haproxy:ENDPOINT such as haproxy:tcp:7007")
        try:
            wrapped = cls.fromConfig(inner)
        except InvalidValue as e:
            raise InvalidValue(f"{text!r}: {e}") from None
        if wrapped.transport != "stream":
            raise InvalidValue(
                f"{text!r}: the PROXY protocol needs a stream endpoint (tcp:, tcp6:, unix:, ...), not udp:"
            )
        return cls(text=text, transport="stream", reusePort=wrapped.reusePort)

    @classmethod
    def _parseUDP(cls, text: str, args: list[str]) -> ListenAddress:
        """
        Parse netd's own C{udp:PORT[:interface=ADDR][:reuseport=yes]}.
        """
        grammar = "expected udp:PORT[:interface=ADDR][:reuseport=yes]"
        if not args or not args[0]:
            raise InvalidValue(f"{text!r} lacks a port; {grammar}")
        try:
            port = _checkPort(args[0])
            reusePort = False
            for arg in args[1:]:
                if arg.startswith("reuseport="):
                    reusePort = _checkReusePort("udp", arg.partition("=")[2])
            rest = [arg for arg in args[1:] if not arg.startswith("reuseport=")]
            interface = ""
            if rest:
                # interface= is the only other argument, so every colon after it
                # belongs to the address: IPv6 works escaped (\:\:1) or not (::1).
                key, equals, val = ":".join(rest).partition("=")
                if key != "interface" or not equals:
                    raise InvalidValue(f"unknown argument {rest[0]!r}; {grammar}")
                interface = _checkInterface(val, None) if val else ""
        except InvalidValue as e:
            raise InvalidValue(f"{text!r}: {e}") from None
        return cls(text=text, transport="datagram", port=port, interface=interface, reusePort=reusePort)

    def toConfig(self) -> str:
        """
        The listen string as written.
        """
        return self.text

    def portZeroInterface(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """
        The interface of a C{tcp:0}, C{tcp6:0} or C{udp:0} address (C{0.0.0.0}
        or C{::} when it names none), by which a stream and a datagram listener
        that let the system pick their port are paired onto one port number;
        L{None} for any other address (a fixed port, C{unix:}, C{systemd:},
        C{haproxy:}).
        """
        if self.transport == "datagram":
            return ipaddress.ip_address(self.interface or "0.0.0.0") if self.port == 0 else None
        parts = splitDescription(self.text)
        if parts[0] not in ("tcp", "tcp6"):
            return None
        keywords = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        positional = [p for p in parts[1:] if "=" not in p]
        if int(keywords.get("port", positional[0] if positional else "0")) != 0:
            return None
        return ipaddress.ip_address(keywords.get("interface") or ("::" if parts[0] == "tcp6" else "0.0.0.0"))

    def withPort(self, port: int) -> ListenAddress:
        """
        This C{tcp:0}, C{tcp6:0} or C{udp:0} address on the port C{port} instead
        (its other arguments, escapes included, as written).
        """
        raw = _rawParts(self.text)
        for index, part in enumerate(raw[1:], 1):
            if "=" not in part or part.startswith("port="):
                raw[index] = f"port={port}" if part.startswith("port=") else str(port)
                break
        text = ":".join(raw)
        return (
            attrs.evolve(self, text=text, port=port) if self.transport == "datagram" else attrs.evolve(self, text=text)
        )

    async def listenStream(
        self, reactor: Any, factory: IProtocolFactory, proxyTrusted: TrustedSources = DEFAULT_TRUSTED_SOURCES
    ) -> IListeningPort:
        """
        Listen on this stream endpoint.

        @param proxyTrusted: on a C{haproxy:} endpoint, the peers whose PROXY
            headers are believed; the others are closed as they are accepted.
        """
        text = self.text
        proxied = splitDescription(text)[0] == "haproxy"
        if proxied:
            text = text.partition(":")[2]
            factory = ProxyHeaderFactory(factory, proxyTrusted, clock=reactor)
        text = withoutReusePort(withBacklog(text))
        if self.reusePort:
            return listenSharedTCP(acceptGuarded(reactor), factory, *_tcpArguments(text))
        try:
            endpoint = serverFromString(acceptGuarded(reactor), text)
        except (IndexError, KeyError):
            if splitDescription(text)[0] != "systemd":
                raise
            # Twisted's systemd parser looks the passed socket up by index or name.
            raise LookupError(NO_INHERITED_SOCKET) from None
        port: IListeningPort = await endpoint.listen(factory)
        return port

    def listenDatagram(self, reactor: Any, protocol: DatagramProtocol) -> IListeningPort:
        """
        Bind this UDP address: on netd's reactors, with a port that reads and
        sends in batches (L{netd.reactors.udp}) where its start-up check
        passes; with the reactor's own port otherwise (Twisted's reactor, as
        C{NETD_REACTOR=twisted} chooses, or a test's fake one).

        @raise twisted.internet.error.CannotListenError: when the bind fails.
        """
        if self.reusePort:
            return listenSharedUDP(reactor, protocol, self.port, self.interface, MAX_DATAGRAM)
        if INetdReactor.providedBy(reactor) and BATCHING_CANARY.alive():
            return listenBatchingUDP(reactor, self.port, protocol, interface=self.interface, maxPacketSize=MAX_DATAGRAM)
        port: IListeningPort = reactor.listenUDP(
            self.port, protocol, interface=self.interface, maxPacketSize=MAX_DATAGRAM
        )
        return port


def _tcpArguments(text: str) -> tuple[int, str, int, int]:
    """
    The port, interface, backlog and address family of a checked C{tcp:} or
    C{tcp6:} endpoint string with its backlog set (L{withBacklog}), as
    Twisted's parser reads them (a bare C{tcp6:} listens on C{::}).
    """
    kind, *args = splitDescription(text)
    keywords = dict(arg.split("=", 1) for arg in args if "=" in arg)
    positional = [arg for arg in args if "=" not in arg]
    port = int(keywords.get("port", positional[0] if positional else "0"))
    interface = keywords.get("interface", "::" if kind == "tcp6" else "")
    family = socket.AF_INET6 if kind == "tcp6" or ":" in interface else socket.AF_INET
    return port, interface, int(keywords["backlog"]), family


def describeBound(port: IListeningPort) -> dict[str, object]:
    """
    Where a port really listens, as a JSON-ready mapping (the port picked for
    port 0 included): C{{"transport": "tcp", "host": "127.0.0.1", "port": 40123}}
    or C{{"transport": "unix", "path": "/run/netd.sock"}}.
    """
    host = port.getHost()
    if isinstance(host, (IPv4Address, IPv6Address)):
        return {"transport": host.type.lower(), "host": host.host, "port": host.port}
    if isinstance(host, UNIXAddress):
        name = host.name.decode() if isinstance(host.name, bytes) else host.name
        return {"transport": "unix", "path": name}
    return {"transport": type(host).__name__, "address": str(host)}


def addressInUse(error: BaseException | None) -> bool:
    """
    Whether a bind failed because another socket holds the address (C{EADDRINUSE}).
    """
    return isinstance(error, CannotListenError) and getattr(error.socketError, "errno", None) == errno.EADDRINUSE


def whyListenFailed(
    key: str, address: ListenAddress, error: BaseException, otherWays: str = "", shareable: bool = False
) -> str:
    """
    Why listening on C{address}, the value of the config key C{key}, failed:
    the bind's own error, or, for an address another socket holds, which
    address, the command that shows who holds it, and the ways out, each
    naming C{key}, so that a second netd started beside a first one says how
    to make room.

    @param otherWays: further ways out, appended to the list (the control
        API can be turned off).
    @param shareable: whether netds may share the address (a service's, not
        the control API's): then C{reuseport=yes} is one more way out, or,
        where it was set, the reason it did not help.
    """
    if not addressInUse(error):
        return str(error)
    assert isinstance(error, CannotListenError)
    if error.interface is None:
        path = os.fsdecode(error.port)
        return (
            f"address already in use: the socket file {path} exists. If a process listens on it "
            f"(`ss -lxp 'src = {path}'` shows which), choose another path in {key}{otherWays} or stop that process; "
            "if none does, the file is left over from a process that ended without removing it: remove it"
        )
    transport = "udp" if address.transport == "datagram" else "tcp"
    interface = str(error.interface)
    where = f"[{interface}]:{error.port}" if ":" in interface else f"{interface or '*'}:{error.port}"
    portZero, sharing = "port 0", ""
    if splitDescription(address.text)[0] in _REUSEPORT_PREFIXES:
        portZero = f"port 0 ({address.withPort(0).text})"
    inner = address.text.partition(":")[2] if splitDescription(address.text)[0] == "haproxy" else address.text
    if shareable and splitDescription(inner)[0] in _REUSEPORT_PREFIXES:
        sharing = (
            "; it was listened on with reuseport=yes, so the holder did not set it or runs as another user"
            if address.reusePort
            else "; to share the port between netds started from one config, add reuseport=yes to this listen string"
        )
    return (
        f"address already in use: another process (another netd?) holds {transport} {where}; "
        f"`ss -l{transport[0]}np 'sport = :{error.port}'` shows which (run it as root to see every user's). "
        f"Choose another port in {key}, or {portZero} to let the system pick a free one (the log and the "
        f"ports file say which){otherWays}, or stop the process that holds it{sharing}"
    )
