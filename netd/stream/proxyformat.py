"""
The PROXY protocol's two header formats, parsed as HAProxy's specification
(proxy-protocol.txt) writes them: version 1, one line of text, and version 2,
a binary block.  Only what netd needs: the client's and the listener's
addresses, or none (C{UNKNOWN}, C{LOCAL}, C{UNSPEC}: the connection's own).

L{HeaderReader} is fed the bytes of a connection until a header is whole;
anything that is not a well-formed header raises L{MalformedHeader}
(L{NoHeader} when it does not even start like one).  L{encodeProxyHeader}
writes the headers a proxy sends towards its upstream.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from typing import Literal

import attrs
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

V1_MAX = 107
"""
The longest a version 1 header may be, with its CRLF (the specification's
"worst case": a TCP6 header with the longest addresses).
"""

V2_MAX = 16 + 65535
"""
The longest a version 2 header may be: its 16 bytes, then at most 65535 of
addresses and TLVs.
"""

_V1_LINE = re.compile(
    rb"PROXY (?:UNKNOWN(?: [\x21-\x7e ]*)?|(TCP4|TCP6) ([0-9A-Fa-f.:]+) ([0-9A-Fa-f.:]+) (0|[1-9][0-9]{0,4}) (0|[1-9][0-9]{0,4}))"
)
"""
A version 1 line without its CRLF: single spaces between fields, ports in
decimal without leading zeros; C{UNKNOWN} may be followed by anything
printable (the sender's addresses, ignored).
"""

_V2_LAYOUTS = {1: "!4s4sHH", 2: "!16s16sHH", 3: "!108s108s"}
"""
The address blocks of version 2, by family: AF_INET, AF_INET6, AF_UNIX.
"""


class MalformedHeader(ValueError):
    """
    The bytes are not a well-formed PROXY header; the message says what is wrong.
    """


class NoHeader(MalformedHeader):
    """
    The bytes do not even start like a PROXY header.
    """


@attrs.frozen
class ProxyInfo:
    """
    What a header says: the client's address and the one it connected to,
    both L{None} when the header says to use the connection's own.
    """

    source: IAddress | None
    destination: IAddress | None


def _ipAddress(text: bytes, version: int, port: int) -> IPv4Address | IPv6Address:
    try:
        ip = ipaddress.ip_address(text.decode("ascii"))
    except ValueError:
        raise MalformedHeader(f"{text!r} is not an IP address") from None
    if ip.version != version:
        raise MalformedHeader(f"{text!r} is not an IPv{version} address")
    if port > 65535:
        raise MalformedHeader(f"port {port} is above 65535")
    if isinstance(ip, ipaddress.IPv4Address):
        return IPv4Address("TCP", str(ip), port)
    return IPv6Address("TCP", str(ip), port)


def parseV1(line: bytes) -> ProxyInfo:
    """
    Parse a version 1 header line, without its CRLF.

    @raise MalformedHeader: it is not one.
    """
    found = _V1_LINE.fullmatch(line)
    if found is None:
        raise MalformedHeader(f"not a PROXY v1 line: {line[:V1_MAX]!r}")
    protocol, source, destination, sourcePort, destinationPort = found.groups()
    if protocol is None:
        return ProxyInfo(None, None)
    version = 4 if protocol == b"TCP4" else 6
    return ProxyInfo(
        _ipAddress(source, version, int(sourcePort)),
        _ipAddress(destination, version, int(destinationPort)),
    )


def parseV2(header: bytes) -> ProxyInfo:
    """
    Parse a whole version 2 header (its 16 bytes and the length they give).

    @raise MalformedHeader: it is not one.
    """
    if header[:12] != V2_SIGNATURE:
        raise MalformedHeader("not a PROXY v2 signature")
    versionCommand, familyTransport, length = struct.unpack("!BBH", header[12:16])
    if versionCommand >> 4 != 2:
        raise MalformedHeader(f"PROXY v2 header of version {versionCommand >> 4}")
    command = versionCommand & 0x0F
    if command not in (0, 1):
        raise MalformedHeader(f"PROXY v2 header with the unknown command {command}")
    if len(header) != 16 + length:
        raise MalformedHeader(f"PROXY v2 header of {len(header)} bytes, announcing {16 + length}")
    family, transport = familyTransport >> 4, familyTransport & 0x0F
    if family > 3 or transport > 2:
        raise MalformedHeader(f"PROXY v2 header with the unknown family and transport 0x{familyTransport:02x}")
    if command == 0 or family == 0 or transport == 0:
        # LOCAL (the proxy's own connection, a health check) or UNSPEC: the connection's own addresses.
        return ProxyInfo(None, None)
    layout = _V2_LAYOUTS[family]
    size = struct.calcsize(layout)
    if length < size:
        raise MalformedHeader(f"PROXY v2 header with {length} bytes of addresses, short of {size}")
    fields = struct.unpack(layout, header[16 : 16 + size])
    if family == 3:
        return ProxyInfo(UNIXAddress(fields[0].rstrip(b"\x00")), UNIXAddress(fields[1].rstrip(b"\x00")))
    source, destination, sourcePort, destinationPort = fields
    kind: Literal["TCP", "UDP"] = "TCP" if transport == 1 else "UDP"
    if family == 1:
        return ProxyInfo(
            IPv4Address(kind, str(ipaddress.IPv4Address(source)), sourcePort),
            IPv4Address(kind, str(ipaddress.IPv4Address(destination)), destinationPort),
        )
    return ProxyInfo(
        IPv6Address(kind, str(ipaddress.IPv6Address(source)), sourcePort),
        IPv6Address(kind, str(ipaddress.IPv6Address(destination)), destinationPort),
    )


def encodeProxyHeader(version: Literal["v1", "v2"], source: IAddress, destination: IAddress) -> bytes:
    """
    The PROXY header a proxy sends first on its upstream connection, naming
    the client (C{source}) and the address it connected to (C{destination}).

    TCP over IPv4 or IPv6 is named as such; anything else (a unix-socket
    client, or mixed families) as the proxy's own connection: v1's
    C{PROXY UNKNOWN}, v2's C{LOCAL} command with no addresses.
    """
    family = _tcpFamily(source, destination)
    if version == "v1":
        if family == 0:
            return V1_SIGNATURE + b"UNKNOWN\r\n"
        assert isinstance(source, IPv4Address | IPv6Address) and isinstance(destination, IPv4Address | IPv6Address)
        protocol = "TCP4" if family == 1 else "TCP6"
        line = f"{protocol} {_bareHost(source)} {_bareHost(destination)} {source.port} {destination.port}\r\n"
        return V1_SIGNATURE + line.encode("ascii")
    if family == 0:
        # LOCAL (command 0), family and transport UNSPEC, no addresses.
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, 0)
    assert isinstance(source, IPv4Address | IPv6Address) and isinstance(destination, IPv4Address | IPv6Address)
    addresses = struct.pack(
        _V2_LAYOUTS[family],
        ipaddress.ip_address(_bareHost(source)).packed,
        ipaddress.ip_address(_bareHost(destination)).packed,
        source.port,
        destination.port,
    )
    # PROXY (command 1) of version 2; the family in the high nibble, STREAM (1) in the low one.
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family << 4 | 1, len(addresses)) + addresses


def _bareHost(address: IPv4Address | IPv6Address) -> str:
    """
    The address's host without an IPv6 scope (C{fe80::1%eth0}), which the
    header has no room for.
    """
    return address.host.partition("%")[0]


def _tcpFamily(source: IAddress, destination: IAddress) -> int:
    """
    The version 2 family number of two TCP addresses of the same IP version
    (1 for IPv4, 2 for IPv6), or 0 when they are not that.
    """
    for family, kind in ((1, IPv4Address), (2, IPv6Address)):
        if isinstance(source, kind) and isinstance(destination, kind) and source.type == destination.type == "TCP":
            return family
    return 0


class HeaderReader:
    """
    Collects the first bytes of a connection until its PROXY header (either
    version) is whole, without holding more than the longest header.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> tuple[ProxyInfo, bytes] | None:
        """
        Take more bytes of the connection.

        @return: the header's information and the bytes that followed it,
            once it is whole; L{None} while more are needed.
        @raise MalformedHeader: the bytes cannot start, or do not make, a header.
        """
        buffer = self._buffer + data
        if buffer[:12] == V2_SIGNATURE[: len(buffer)] and len(buffer) < 16:
            self._buffer = buffer
            return None
        if buffer.startswith(V2_SIGNATURE):
            size = 16 + struct.unpack("!H", buffer[14:16])[0]
            if len(buffer) < size:
                if buffer[12] >> 4 != 2:
                    raise MalformedHeader(f"PROXY v2 header of version {buffer[12] >> 4}")
                self._buffer = buffer
                return None
            self._buffer = b""
            return parseV2(buffer[:size]), buffer[size:]
        if not (buffer.startswith(V1_SIGNATURE) or V1_SIGNATURE.startswith(buffer)):
            raise NoHeader("no PROXY header")
        end = buffer.find(b"\r\n", 0, V1_MAX)
        if end < 0:
            if len(buffer) >= V1_MAX or b"\n" in buffer:
                raise MalformedHeader(f"no CRLF within the first {V1_MAX} bytes of a PROXY v1 header")
            self._buffer = buffer
            return None
        self._buffer = b""
        return parseV1(buffer[:end]), buffer[end + 2 :]
