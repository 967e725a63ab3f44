"""
The option schema of a service's C{tls} table (L{TLSOptions}): Mozilla's
profiles, versions, ciphers, ALPN, client certificates, SNI and session
settings, and the checks that span several keys; and of the TLS of
connections netd makes to a server (L{ClientTLSOptions}).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, ClassVar, Literal

import attrs
from OpenSSL import SSL

from netd.config.options import ConfigPath, InvalidValue, between, describeValue, option

AUTO = "auto"

ClientAuth = Literal["none", "optional", "required"]


@attrs.frozen(order=True)
class TLSVersion:
    """
    A TLS protocol version, written C{"1.2"} (or as a TOML number, C{1.2}).
    """

    name: str

    configTypeName: ClassVar[str] = 'a TLS version: "1.0", "1.1", "1.2" or "1.3"'
    configJsonSchema: ClassVar[dict[str, Any]] = {"enum": ["1.0", "1.1", "1.2", "1.3", 1.0, 1.1, 1.2, 1.3]}
    _NUMBERS: ClassVar[dict[str, int]] = {
        "1.0": SSL.TLS1_VERSION,
        "1.1": SSL.TLS1_1_VERSION,
        "1.2": SSL.TLS1_2_VERSION,
        "1.3": SSL.TLS1_3_VERSION,
    }

    @classmethod
    def fromConfig(cls, value: object) -> TLSVersion:
        """
        Parse a version.

        @raise InvalidValue: for anything but the four versions.
        """
        text = str(value) if isinstance(value, float) else value
        if isinstance(text, str) and text in cls._NUMBERS:
            return cls(text)
        raise InvalidValue(f"expected {cls.configTypeName}, got {describeValue(value)}")

    def toConfig(self) -> str:
        """
        The version as written in the config.
        """
        return self.name

    @property
    def openssl(self) -> int:
        """
        OpenSSL's number for this version (C{TLS1_2_VERSION}, ...).
        """
        return self._NUMBERS[self.name]


Profile = Literal["modern", "intermediate", "old"]


@attrs.frozen
class TLSProfile:
    """
    One of Mozilla's server-side TLS configurations (guidelines 5.7,
    U{https://ssl-config.mozilla.org/guidelines/5.7.json}), as netd applies it:
    without the DHE suites, which netd sets no DH parameters for.

    @ivar minVersion: the oldest version served unless C{min_version} says otherwise.
    @ivar ciphers: the OpenSSL cipher list for TLS 1.2 and older, unless
        C{ciphers} says otherwise; L{None} when the profile has none (TLS 1.3 only).
    @ivar serverPreference: whether the server's order of suites wins over the
        client's: only for "old", whose list mixes strong and weak suites.
    """

    name: str
    minVersion: TLSVersion
    ciphers: str | None
    serverPreference: bool


_INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)

_OLD_CIPHERS = _INTERMEDIATE_CIPHERS + (
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-RSA-AES256-SHA384",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA256",
    "AES256-SHA256",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
)

TLS13_CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
"""
The TLS 1.3 suites of every profile: Mozilla's, which are also OpenSSL's
defaults, set explicitly so that a build with other defaults changes nothing.
"""

GROUPS = "X25519:P-256:P-384"
"""
The key-exchange groups of every profile (Mozilla's C{tls_curves}): no
X448, P-521 or finite-field groups, which OpenSSL would otherwise offer.
"""

HYBRID_GROUP = "X25519MLKEM768"
"""
The post-quantum hybrid group offered first when the OpenSSL netd runs on
knows it (3.5 and later; Mozilla's later refresh adds it to every profile):
a client that speaks it is safe from recording now and decrypting later.
"""

PROFILES = {
    "modern": TLSProfile("modern", TLSVersion("1.3"), None, False),
    "intermediate": TLSProfile("intermediate", TLSVersion("1.2"), ":".join(_INTERMEDIATE_CIPHERS), False),
    "old": TLSProfile("old", TLSVersion("1.0"), ":".join(_OLD_CIPHERS), True),
}
"""
The profiles C{tls.profile} names.  "intermediate", the default, serves TLS
1.2 with ECDHE and AES-GCM or ChaCha20-Poly1305 (forward secret, AEAD) and
TLS 1.3; "modern" TLS 1.3 alone; "old" TLS 1.0 and up with CBC, SHA-1 and
static-RSA suites, for clients that cannot do better (or tests of clients
that must refuse them).
"""


def _validCiphers(value: str) -> str | None:
    """
    A check that OpenSSL understands a cipher string and it names some suite.
    """
    try:
        SSL.Context(SSL.TLS_METHOD).set_cipher_list(value.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        return f"{value!r} is not an OpenSSL cipher string that selects any cipher suite (see `openssl ciphers`)"
    return None


_GROUP_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _validGroups(value: tuple[str, ...] | None) -> str | None:
    """
    A check that key-exchange group names are written as OpenSSL's are,
    each once; whether OpenSSL knows them is checked when the service's
    contexts are made (L{netd.tls.contexts.ServerTLS}).
    """
    if value is None:
        return None
    if not value:
        return "names no group; leave groups unset for netd's"
    for i, name in enumerate(value):
        if not _GROUP_NAME.fullmatch(name):
            return f'[{i}] {name!r} is not a group name (as OpenSSL writes them: "X25519", "P-256", ...)'
        if name.lower() in (earlier.lower() for earlier in value[:i]):
            return f"[{i}] {name!r} is named twice"
    return None


def _validProtocols(value: tuple[str, ...]) -> str | None:
    """
    A check that ALPN protocol names are 1 to 255 printable ASCII bytes.
    """
    for i, name in enumerate(value):
        if not (1 <= len(name) <= 255 and name.isascii() and name.isprintable()):
            return f"[{i}] {name!r} is not an ALPN protocol name (1 to 255 printable ASCII characters)"
    return None


ALLOW_TYPES = ("dns", "uri", "cn")
"""
The types of a C{client_allow} entry, written C{TYPE:NAME}.
"""

_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")


def parseAllowEntry(entry: str) -> tuple[str, str]:
    """
    Split a C{client_allow} entry into its type and name, the DNS name
    lowercased and without a trailing dot.

    @raise InvalidValue: untyped (saying which type its shape suggests), of
        an unknown type, or a name malformed for its type.
    """
    kind, colon, name = entry.partition(":")
    kind = kind.lower()
    looksTyped = kind in ALLOW_TYPES or (kind.isalpha() and not name.startswith("//"))
    if not colon or not looksTyped:
        if _URI.fullmatch(entry) and "://" in entry:
            guess = "uri"
        elif _SERVER_NAME.fullmatch(entry.lower().rstrip(".")) and "." in entry:
            guess = "dns"
        else:
            guess = "cn"
        raise InvalidValue(f'"{entry}" has no type; did you mean "{guess}:{entry}"?')
    if kind not in ALLOW_TYPES:
        raise InvalidValue(f'"{entry}" has an unknown type "{kind}"; known: ' + ", ".join(f"{t}:" for t in ALLOW_TYPES))
    if not name.strip():
        raise InvalidValue(f'"{entry}" names nothing after "{kind}:"')
    if kind == "dns":
        name = name.lower().rstrip(".")
        if not _SERVER_NAME.fullmatch(name):
            raise InvalidValue(f'"{entry}" is not a DNS name')
        if name.startswith("*."):
            raise InvalidValue(f'"{entry}": client names are matched exactly, without wildcards')
    elif kind == "uri" and not _URI.fullmatch(name):
        raise InvalidValue(f'"{entry}" is not a URI (SCHEME:...)')
    return kind, name


def _validAllowEntries(value: tuple[str, ...]) -> str | None:
    """
    A check that every C{client_allow} entry is typed and well formed.
    """
    for i, entry in enumerate(value):
        try:
            parseAllowEntry(entry)
        except InvalidValue as e:
            return f"[{i}] {e}"
    return None


_SERVER_NAME = re.compile(r"(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


def _validServerNames(value: dict[str, Any]) -> str | None:
    """
    A check that each C{sni} key is a DNS name, or a wildcard C{*.NAME}.
    """
    for name in value:
        if not _SERVER_NAME.fullmatch(name.lower()):
            return f"{name!r} is not a DNS name (a leading '*.' is allowed)"
    return None


@attrs.frozen
class SNICertificate:
    """
    The certificate served to clients that ask for one server name.
    """

    certificate: Literal["auto"] | ConfigPath = option(
        help="PEM file of the certificate for this name (the chain may follow it)."
    )
    private_key: ConfigPath = option(help="PEM file of its private key (unencrypted).")


@attrs.frozen
class TLSOptions:
    """
    A service's C{tls} table: TLS in front of its plugin, on its stream listeners.
    """

    certificate: Literal["auto"] | ConfigPath = option(
        help='PEM file of the server certificate (the chain may follow it), or "auto" for a development '
        "certificate made once in the state directory.",
    )
    private_key: ConfigPath | None = option(
        None, help='PEM file of the certificate\'s private key (unencrypted); required unless certificate = "auto".'
    )
    profile: Profile = option(
        "intermediate",
        help='Mozilla\'s TLS configuration served: "modern" (TLS 1.3 only), "intermediate" (TLS 1.2 with '
        'ECDHE and AEAD suites, and 1.3) or "old" (TLS 1.0 and up, CBC and static-RSA suites too).',
    )
    min_version: TLSVersion | None = option(
        None,
        help='The oldest TLS version accepted: "1.0", "1.1", "1.2" or "1.3"; unset, the profile\'s '
        "(1.3 modern, 1.2 intermediate, 1.0 old).",
    )
    max_version: TLSVersion | None = option(
        None, help="The newest TLS version accepted; the newest there is when unset."
    )
    ciphers: str | None = option(
        None,
        help="OpenSSL cipher string for TLS 1.2 and older, replacing the profile's list (TLS 1.3 suites stay the profile's).",
        checks=(_validCiphers,),
    )
    groups: tuple[str, ...] | None = option(
        None,
        help='Key-exchange groups accepted, preferred first, as OpenSSL names them ("X25519MLKEM768", "X25519", '
        '"P-256", "P-384", ...); unset: X25519MLKEM768 (when OpenSSL knows it), X25519, P-256, P-384.',
        checks=(_validGroups,),
    )
    alpn: tuple[str, ...] = option(
        (),
        help="ALPN protocols offered, preferred first; a client offering only others is refused. None: no ALPN.",
        checks=(_validProtocols,),
    )
    client_ca: ConfigPath | None = option(None, help="PEM file of the CAs client certificates must chain to.")
    client_auth: ClientAuth = option(
        "none", help='Client certificates: "none" (not asked for), "optional" (checked if sent) or "required".'
    )
    client_allow: tuple[str, ...] = option(
        (),
        help='Names of which a client certificate must carry one, each typed: "dns:NAME" (a SAN DNS name), '
        '"uri:URI" (a SAN URI) or "cn:NAME" (the subject CN, only of a certificate without SAN DNS names or URIs); '
        "any when empty.",
        checks=(_validAllowEntries,),
    )
    sni: dict[str, SNICertificate] | None = option(
        None,
        help="Server name (or *.name) to the certificate and private_key served to clients asking for it; "
        "the default certificate serves the others.",
        checks=(_validServerNames,),
    )
    handshake_timeout: float = option(
        10.0,
        help="Seconds a client gets to finish its handshake before it is disconnected; 0 never.",
        checks=(between(0, 3600),),
    )
    session_resumption: bool = option(True, help="Let clients resume sessions (session IDs and tickets).")
    session_ticket_rotation: float = option(
        3600.0,
        help="Seconds between new session-ticket keys (and an emptied session cache), so that a stolen key "
        "decrypts at most that long of resumable sessions; a session resumes for at most as long. 0: only on reload.",
        checks=(between(0, 7 * 86400),),
    )

    @property
    def minVersion(self) -> TLSVersion:
        """
        The oldest version served: C{min_version}, else the profile's.
        """
        return self.min_version if self.min_version is not None else PROFILES[self.profile].minVersion

    @property
    def tls12Ciphers(self) -> str | None:
        """
        The cipher list for TLS 1.2 and older: C{ciphers}, else the
        profile's; L{None} when there is none (TLS 1.3 only).
        """
        return self.ciphers if self.ciphers is not None else PROFILES[self.profile].ciphers

    def crossCheck(self) -> list[tuple[str, str]]:
        """
        Rules that span several keys: (key, problem) pairs.
        """
        problems = []
        if self.certificate == AUTO:
            if self.private_key is not None:
                problems.append(("private_key", 'certificate = "auto" makes its own key; remove private_key'))
        elif self.private_key is None:
            problems.append(("private_key", 'missing; required unless certificate = "auto"'))
        minVersion = self.minVersion
        if self.max_version is not None and self.max_version < minVersion:
            given = "min_version" if self.min_version is not None else f'profile "{self.profile}"\'s oldest version'
            problems.append(("max_version", f"{self.max_version.name} is older than {given} ({minVersion.name})"))
        if self.ciphers is None and minVersion < TLSVersion("1.3"):
            profileCiphers = PROFILES[self.profile].ciphers
            if profileCiphers is None:
                problems.append(
                    (
                        "min_version",
                        f'profile "{self.profile}" has no suites for TLS {minVersion.name}; set ciphers, or profile = "intermediate"',
                    )
                )
            elif minVersion < TLSVersion("1.2") and self.profile != "old":
                problems.append(
                    (
                        "min_version",
                        f'profile "{self.profile}" has no suites for TLS {minVersion.name}, only for 1.2; set profile = "old", or ciphers',
                    )
                )
        if self.client_auth == "none":
            if self.client_ca is not None:
                problems.append(
                    (
                        "client_ca",
                        'client_auth is "none", so no client certificate is asked for; set client_auth to "optional" or "required"',
                    )
                )
            if self.client_allow:
                problems.append(("client_allow", 'needs client_auth = "required"'))
        else:
            if self.client_ca is None:
                problems.append(
                    (
                        "client_ca",
                        f'missing; client_auth = "{self.client_auth}" needs the CAs client certificates must chain to',
                    )
                )
            if self.client_allow and self.client_auth != "required":
                problems.append(
                    (
                        "client_allow",
                        f'needs client_auth = "required", not "{self.client_auth}" (a client without a certificate would pass)',
                    )
                )
        for name, entry in (self.sni or {}).items():
            if entry.certificate == AUTO:
                problems.append(
                    ("sni", f'{name!r}: "auto" is only for the default certificate; give a certificate file')
                )
        return problems


def _validVerifiedName(value: str | None) -> str | None:
    """
    A check that a name to verify a server by is a DNS name or an IP address.
    """
    if value is None:
        return None
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    if not _SERVER_NAME.fullmatch(value.lower().rstrip(".")) or value.startswith("*."):
        return f"{value!r} is not a DNS name or an IP address"
    return None


class CABundlePath(ConfigPath):
    """
    A PEM file of the CAs a client checks its servers' certificates against
    (dns-proxy's C{ca_bundle}): a path like any other, whose certificates
    C{netd check} reads as the start does, wherever a plugin's options hold one.
    """


@attrs.frozen
class ClientTLSOptions:
    """
    The TLS of connections netd makes to a server (the proxy's
    C{upstream_tls}): whom to trust, which name to check, the client
    certificate, versions and ALPN.  L{netd.tls.client.clientCreatorFor}
    turns it into the settings of a connection, reading the files (when the
    service starts, as for the C{tls} table).
    """

    ca_bundle: ConfigPath | None = option(
        None,
        help="PEM file of the CAs the server's certificate must chain to; the system's when unset.",
    )
    server_name: str | None = option(
        None,
        help="The name sent as SNI (a DNS name) and that the server's certificate must be valid for "
        "(a DNS name, or an IP address checked against the certificate's IP SANs); unset, the host of "
        "the server's address.",
        checks=(_validVerifiedName,),
    )
    verify: bool = option(
        True,
        help="Check the server's certificate (chain and name).  false accepts ANY server, an attacker's "
        "included: for tests against a server with a throwaway certificate only; logged once as a warning "
        "and counted.",
    )
    certificate: ConfigPath | None = option(
        None,
        help="PEM file of the client certificate (the chain may follow it) for servers that ask for one "
        "(mutual TLS); with private_key.",
    )
    private_key: ConfigPath | None = option(
        None, help="PEM file of the client certificate's private key (unencrypted)."
    )
    min_version: TLSVersion | None = option(
        None, help='The oldest TLS version offered: "1.0", "1.1", "1.2" or "1.3"; "1.2" when unset.'
    )
    max_version: TLSVersion | None = option(
        None, help="The newest TLS version offered; the newest there is when unset."
    )
    alpn: tuple[str, ...] = option(
        (), help="ALPN protocols offered, preferred first; none when empty.", checks=(_validProtocols,)
    )

    def crossCheck(self) -> list[tuple[str, str]]:
        """
        Rules that span several keys: (key, problem) pairs.
        """
        problems = []
        if self.certificate is not None and self.private_key is None:
            problems.append(("private_key", "missing; a client certificate needs its private key"))
        if self.private_key is not None and self.certificate is None:
            problems.append(("certificate", "missing; private_key is the key of a client certificate"))
        if not self.verify and self.ca_bundle is not None:
            problems.append(("ca_bundle", "verify = false checks no certificate against it; remove one of the two"))
        if self.min_version is not None and self.max_version is not None and self.max_version < self.min_version:
            problems.append(
                ("max_version", f"{self.max_version.name} is older than min_version ({self.min_version.name})")
            )
        return problems
