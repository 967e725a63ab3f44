"""
The upstreams as configured: the strings C{udp:HOST[:PORT]},
C{tcp:HOST[:PORT]}, C{tls:HOST[:PORT]:name=SERVERNAME} and C{system}
(L{Upstream.fromConfig}), and the nameservers of C{/etc/resolv.conf} that
C{system} stands for (L{expandUpstreams}).

This is the config side only, checked when the config is loaded; reaching an
upstream is L{netd_plugins.dnsproxy.transports}, forwarding to the upstreams
with failover and health checks is L{netd_plugins.dnsproxy.resolver}.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, ClassVar, Literal, cast

import attrs

from netd.config.options import InvalidValue, closeMatch, describeValue

Transport = Literal["udp", "tcp", "tls"]

DEFAULT_PORTS: dict[str, int] = {"udp": 53, "tcp": 53, "tls": 853}
"""
The port of each transport when an upstream string gives none.
"""


@attrs.frozen
class Upstream:
    """
    One upstream resolver, as configured; the config word C{system} decodes to a
    placeholder (L{SYSTEM}, C{isSystem} set) that L{expandUpstreams} replaces with
    the nameservers of C{/etc/resolv.conf}.

    @ivar transport: C{udp}, C{tcp} or C{tls} (DNS over TLS, RFC 7858).
    @ivar host: the upstream's IP address (v4 or v6), in canonical form; L{port} its port.
    @ivar serverName: for C{tls}, the name its certificate must carry; L{None} for the others.
    """

    transport: Transport
    host: str
    port: int
    serverName: str | None = None
    isSystem: bool = attrs.field(default=False, kw_only=True)

    configTypeName: ClassVar[str] = (
        "an upstream: 'udp:HOST[:PORT]', 'tcp:HOST[:PORT]', 'tls:HOST[:PORT]:name=SERVERNAME' "
        "(HOST an IP address, IPv6 in brackets) or 'system'"
    )
    configJsonSchema: ClassVar[dict[str, Any]] = {"type": "string", "pattern": "^(system$|(udp|tcp|tls):)"}

    @classmethod
    def fromConfig(cls, value: object) -> Upstream:
        """
        Parse an upstream string.

        IPv6 addresses are written in brackets, with or without a port
        (C{udp:[::1]}, C{udp:[2001:db8::1]:5353}): a bare C{udp:::1:53} could
        be read two ways, so it is refused with the bracketed spelling as hint.
        Hosts are IP addresses, not names (netd does not resolve the names of
        its own resolvers).

        @raise InvalidValue: naming what is wrong and what is expected.
        """
        if not isinstance(value, str):
            raise InvalidValue(f"expected {cls.configTypeName}, got {describeValue(value)}")
        if value == "system":
            return SYSTEM
        if _ipAddress(value) is not None:
            raise InvalidValue(f"{value!r} has no transport; write udp:{_bracketed(value)} (or tcp:, tls:)")
        transport, colon, rest = value.partition(":")
        if not colon:
            expected = "expected 'udp:HOST[:PORT]', 'tcp:HOST[:PORT]', 'tls:HOST[:PORT]:name=SERVERNAME' or 'system'"
            raise InvalidValue(f"{value!r} is not an upstream" + closeMatch(value, ["system"], then=expected))
        if transport not in DEFAULT_PORTS:
            expected = "expected udp:, tcp:, tls: or the word system"
            raise InvalidValue(
                f"{value!r}: unknown transport {transport!r}" + closeMatch(transport, DEFAULT_PORTS, then=expected)
            )
        host, portText, params = _splitAddress(value, rest)
        port = DEFAULT_PORTS[transport]
        if portText is not None:
            if not portText.isdigit() or not portText.isascii():
                raise InvalidValue(f"{value!r}: port {portText!r} is not a number; expected 1 to 65535")
            port = int(portText)
            if not 1 <= port <= 65535:
                raise InvalidValue(f"{value!r}: port {port} is out of range; expected 1 to 65535")
        serverName = _serverName(value, transport, params)
        return cls(cast(Transport, transport), host, port, serverName)

    def toConfig(self) -> str:
        """
        The config string of this upstream (port always given): C{fromConfig}'s inverse.
        """
        if self.isSystem:
            return "system"
        text = f"{self.transport}:{_bracketed(self.host)}:{self.port}"
        if self.serverName is not None:
            text += f":name={self.serverName}"
        return text

    def __str__(self) -> str:
        """
        The config string, for logs and messages.
        """
        return self.toConfig()

    @property
    def isIPv6(self) -> bool:
        """
        Whether the upstream's address is IPv6.
        """
        return ":" in self.host


SYSTEM = Upstream("udp", "", 0, None, isSystem=True)
"""
What the config word C{system} decodes to; L{expandUpstreams} replaces it.
"""


def _ipAddress(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """
    C{text} as an IP address, or L{None} if it is not one.
    """
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _bracketed(host: str) -> str:
    """
    A host as written in an upstream string: IPv6 in brackets.
    """
    return f"[{host}]" if ":" in host else host


def _splitAddress(value: str, rest: str) -> tuple[str, str | None, list[str]]:
    """
    Split what follows the transport into host, port text (if any) and the
    C{key=value} options, checking the host.
    """
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise InvalidValue(f"{value!r}: '[' without a closing ']'; write IPv6 addresses as [ADDRESS]")
        host, tail = rest[1:close], rest[close + 1 :]
        if tail and not tail.startswith(":"):
            raise InvalidValue(f"{value!r}: unexpected {tail!r} after ']'; expected :PORT or nothing")
        parts = tail[1:].split(":") if tail else []
        portText = parts.pop(0) if parts and "=" not in parts[0] else None
        for part in parts:
            if "=" not in part:
                raise InvalidValue(f"{value!r}: unexpected {part!r}; expected HOST[:PORT] then key=value options")
        params = parts
        if host and not _isIPv6(host):
            raise InvalidValue(f"{value!r}: {host!r} in brackets is not an IPv6 address (brackets are for IPv6 only)")
    else:
        parts = rest.split(":")
        params = []
        while parts and "=" in parts[-1]:
            params.insert(0, parts.pop())
        if len(parts) > 2 or (len(parts) == 2 and _isIPv6(":".join(parts))):
            address = ":".join(parts)
            if _isIPv6(address.split("%")[0]):
                raise InvalidValue(
                    f"{value!r}: write IPv6 addresses in brackets, {value.partition(':')[0]}:[{address}] "
                    f"or with a port {value.partition(':')[0]}:[{address}]:PORT"
                )
            raise InvalidValue(f"{value!r}: expected HOST[:PORT] after the transport, got {rest!r}")
        host = parts[0] if parts else ""
        portText = parts[1] if len(parts) == 2 else None
        for part in params:
            if "=" not in part:
                raise InvalidValue(f"{value!r}: unexpected {part!r}; expected key=value")
    if not host:
        raise InvalidValue(f"{value!r}: missing host; expected an IP address after the transport")
    if "%" in host:
        raise InvalidValue(f"{value!r}: IPv6 zone ids ({host[host.index('%') :]}) are not supported")
    canonical = _ipAddress(host)
    if canonical is None:
        raise InvalidValue(
            f"{value!r}: host {host!r} is not an IP address; upstreams are given by address "
            "(IPv4, or IPv6 in brackets), since netd does not look up its resolvers' names"
        )
    return str(canonical), portText, params


def _isIPv6(text: str) -> bool:
    """
    Whether C{text} is an IPv6 address.
    """
    return isinstance(_ipAddress(text), ipaddress.IPv6Address)


def _serverName(value: str, transport: str, params: list[str]) -> str | None:
    """
    Check the C{key=value} options of an upstream string: C{name=} for tls
    (required there), nothing for the others.
    """
    options: dict[str, str] = {}
    for param in params:
        key, _, text = param.partition("=")
        if transport != "tls":
            raise InvalidValue(f"{value!r}: {transport} upstreams take no options ({param!r}); name= is only for tls")
        if key != "name":
            raise InvalidValue(
                f"{value!r}: unknown option {key!r}"
                + closeMatch(key, ["name"], then="the tls transport takes only name=")
            )
        if key in options:
            raise InvalidValue(f"{value!r}: name= given twice")
        if not text:
            raise InvalidValue(f"{value!r}: name= is empty; expected the name on the upstream's certificate")
        options[key] = text
    if transport == "tls" and "name" not in options:
        raise InvalidValue(
            f"{value!r}: tls upstreams need the name their certificate is checked against: "
            "tls:HOST[:PORT]:name=SERVERNAME"
        )
    return options.get("name")


def systemUpstreams(path: str = "/etc/resolv.conf") -> list[Upstream]:
    """
    The C{nameserver} lines of a resolv.conf file as UDP upstreams on port 53,
    in file order, duplicates and unreadable lines skipped, IPv6 zone ids
    (C{%eth0}) dropped.  An unreadable file or one without nameservers gives
    an empty list (this does not fall back to 127.0.0.1 as libc does, which
    could be netd itself).
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found: list[Upstream] = []
    for line in lines:
        words = re.split(r"[#;]", line, maxsplit=1)[0].split()
        if len(words) < 2 or words[0] != "nameserver":
            continue
        address = _ipAddress(words[1].partition("%")[0])
        if address is None:
            continue
        upstream = Upstream("udp", str(address), 53)
        if upstream not in found:
            found.append(upstream)
    return found


def expandUpstreams(
    upstreams: list[Upstream] | tuple[Upstream, ...], resolvConf: str = "/etc/resolv.conf"
) -> list[Upstream]:
    """
    The configured upstreams with the C{system} placeholder replaced by the
    nameservers of C{resolvConf} (L{systemUpstreams}), in order, each upstream
    once.  The result may be empty (C{system} alone and no nameservers).
    """
    expanded: list[Upstream] = []
    for upstream in upstreams:
        for one in systemUpstreams(resolvConf) if upstream.isSystem else [upstream]:
            if one not in expanded:
                expanded.append(one)
    return expanded
