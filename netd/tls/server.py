"""
TLS for every stream service, and TLS client settings for plugins that connect out.

Server side: a service's C{tls} table (L{TLSOptions}) puts a
L{TLSServerFactory} between the core's connection guard and the framing, so a
connection is, from the socket inward::

    GuardedConnection -> TLSServerProtocol -> framing -> the plugin's receiver

L{ServerTLS} loads and checks the certificates and keys when the service is
built (before anything listens) and makes one pyOpenSSL context per
certificate: the default one, and one per C{sni} name, switched to when a
client asks for that name.  The profile (Mozilla's, L{PROFILES}), versions,
ciphers, key-exchange groups, ALPN, client certificates (C{client_ca},
C{client_auth}, C{client_allow}) and session resumption (session IDs and
tickets) are set on every context alike.  While the service listens, its
contexts are made anew every C{session_ticket_rotation} seconds, for new
session-ticket keys (L{ServerTLS.rotateSessionKeys}).

Each connection must finish its handshake within C{handshake_timeout}
seconds.  Handshakes are counted per service: C{tls_handshakes_ok},
C{tls_sessions_resumed}, and C{tls_handshakes_failed_REASON} with REASON one
of L{FAILURE_REASONS}; a failure is logged at info with its reason, a success
at debug with the version, cipher, SNI name, ALPN protocol and client
certificate subject.

Client side: L{clientCreator} makes the settings of a verified client
connection (the chain against a CA bundle or the system's CAs, the name with
service_identity), and L{describeTLSFailure} says in words why one failed.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import os
import re
import stat
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.interfaces import (
    IAddress,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.protocol import connectionDone
from twisted.internet.task import LoopingCall
from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust, trustRootFromCertificates
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.daemon import logs
from netd.tls.devcerts import autoCertificate, defaultStateDir, utcNow
from netd.metrics import Counters
from netd.config.options import ConfigPath, InvalidValue, KeyPath, between, describeValue, option

from OpenSSL._util import ffi as _ffi, lib as _openssl

AUTO = "auto"

ClientAuth = Literal["none", "optional", "required"]

FAILURE_REASONS = (
    "timeout",
    "not_tls",
    "version",
    "no_shared_cipher",
    "alpn_mismatch",
    "client_cert_missing",
    "client_cert_untrusted",
    "client_not_allowed",
    "certificate_rejected",
    "aborted",
    "protocol_error",
)
"""
Why a handshake failed, as counted in C{tls_handshakes_failed_REASON}:

  - C{timeout}: not finished within C{handshake_timeout};
  - C{not_tls}: what arrived is not TLS (plain text, HTTP, garbage);
  - C{version}: the client offered only versions outside min/max_version;
  - C{no_shared_cipher}: no cipher suite (or group, or signature algorithm) in common;
  - C{alpn_mismatch}: the client offered ALPN protocols, none of them in C{alpn};
  - C{client_cert_missing}: C{client_auth = "required"} and the client sent none;
  - C{client_cert_untrusted}: the client's certificate does not verify against C{client_ca};
  - C{client_not_allowed}: it verifies, but carries no name of C{client_allow};
  - C{certificate_rejected}: the client refused netd's certificate (an alert
    such as unknown CA or bad certificate), as it must for the "bad" ones;
  - C{aborted}: the client closed the connection mid-handshake;
  - C{protocol_error}: any other TLS error.
"""

_SESSION_TIMEOUT = 3600
"""
Seconds a TLS session (ID or ticket) can be resumed for, at most: no longer
than C{session_ticket_rotation} either.
"""

_RECORD = 2**14
"""
The most plaintext one TLS record carries: what one read from OpenSSL
returns at most, and the most each write hands it.
"""

_RECEIVED = _ffi.new("char[]", _RECORD)
_SENT = _ffi.new("char[]", 4 * _RECORD + 1024)
"""
What every connection decrypts into and takes its sent records from: shared,
since their bytes are copied out before anything else runs (one thread).
"""

_X509_ERRORS = {
    2: "unable to get issuer certificate",
    4: "unable to decode issuer public key",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
}
"""
OpenSSL's words for the certificate verification errors a client certificate
most often fails with (C{X509_V_ERR_*} codes).
"""


# The schema.


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
    U{https://ssl-config.mozilla.org/guidelines/5.7.json}), as netd applies it.

    The DHE suites of Mozilla's intermediate and old lists are left out: they
    need DH parameters, which netd does not set, so OpenSSL would never
    choose them (Mozilla's later refresh drops them too).

    @ivar minVersion: the oldest version served unless C{min_version} says otherwise.
    @ivar ciphers: the OpenSSL cipher list for TLS 1.2 and older, unless
        C{ciphers} says otherwise; L{None} when the profile has none (TLS
        1.3 only).
    @ivar serverPreference: whether the server's order of suites wins over
        the client's: only for "old", whose list mixes strong and weak
        suites; the others hold only AEAD suites with forward secrecy, among
        which the client knows best (ChaCha20 where it lacks AES hardware).
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

    certificate: Literal["auto"] | ConfigPath = option(help="PEM file of the certificate for this name (the chain may follow it).")
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
    max_version: TLSVersion | None = option(None, help="The newest TLS version accepted; the newest there is when unset.")
    ciphers: str | None = option(
        None,
        help="OpenSSL cipher string for TLS 1.2 and older, replacing the profile's list (TLS 1.3 suites stay the profile's).",
        checks=(_validCiphers,),
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
        10.0, help="Seconds a client gets to finish its handshake before it is disconnected; 0 never.", checks=(between(0, 3600),)
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
                problems.append(("min_version", f'profile "{self.profile}" has no suites for TLS {minVersion.name}; set ciphers, or profile = "intermediate"'))
            elif minVersion < TLSVersion("1.2") and self.profile != "old":
                problems.append(("min_version", f'profile "{self.profile}" has no suites for TLS {minVersion.name}, only for 1.2; set profile = "old", or ciphers'))
        if self.client_auth == "none":
            if self.client_ca is not None:
                problems.append(("client_ca", 'client_auth is "none", so no client certificate is asked for; set client_auth to "optional" or "required"'))
            if self.client_allow:
                problems.append(("client_allow", 'needs client_auth = "required"'))
        else:
            if self.client_ca is None:
                problems.append(("client_ca", f'missing; client_auth = "{self.client_auth}" needs the CAs client certificates must chain to'))
            if self.client_allow and self.client_auth != "required":
                problems.append(("client_allow", f'needs client_auth = "required", not "{self.client_auth}" (a client without a certificate would pass)'))
        for name, entry in (self.sni or {}).items():
            if entry.certificate == AUTO:
                problems.append(("sni", f'{name!r}: "auto" is only for the default certificate; give a certificate file'))
        return problems


# Loading and checking certificates and keys.


class TLSSetupError(ValueError):
    """
    A certificate, key or CA file that cannot be used; the message names the
    key and the file.

    @ivar key: the key path of the file in the service's table
        (C{("tls", "certificate")}), so that C{netd run} and C{netd check}
        name it as config problems are named; C{("tls",)} when no one file is
        at fault, C{()} outside a service.
    """

    def __init__(self, message: str, key: KeyPath = ("tls",)) -> None:
        super().__init__(message)
        self.key = key


_PEM_KEY = re.compile(rb"-----BEGIN ((?:[A-Z0-9]+ )?PRIVATE KEY)-----.+?-----END \1-----", re.DOTALL)
_PRIVATE_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey, dsa.DSAPrivateKey)


def _read(path: str, what: str, key: KeyPath) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSSetupError(f"cannot read {what} {path!r}: {e.strerror}", key) from None


def loadCertificates(path: str, what: str, key: KeyPath = ()) -> list[x509.Certificate]:
    """
    Every certificate of a PEM file, in file order.

    @param what: how messages name the file (C{"tls.certificate"}, C{"the CA bundle"}).
    @param key: its key path in a service's table, for L{TLSSetupError.key}.
    @raise TLSSetupError: the file cannot be read, holds no PEM certificate,
        or one that cannot be parsed.
    """
    data = _read(path, what, key)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TLSSetupError(f"{what} {path!r} holds no PEM certificate", key)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TLSSetupError(f"{what} {path!r} holds a certificate that cannot be read: {e}", key) from None


def loadPrivateKey(path: str, what: str, key: KeyPath = ()) -> Any:
    """
    The (first) private key of a PEM file.

    @param key: its key path in a service's table, for L{TLSSetupError.key}.

    @raise TLSSetupError: the file cannot be read, holds no PEM private key,
        or an encrypted or unusable one.
    """
    data = _read(path, what, key)
    found = _PEM_KEY.search(data)
    if found is None:
        raise TLSSetupError(f"{what} {path!r} holds no PEM private key", key)
    if found.group(1) == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in found.group(0):
        raise TLSSetupError(
            f"{what} {path!r} is encrypted; netd needs an unencrypted key "
            f"(openssl pkey -in {path} -out KEY.pem, then keep KEY.pem readable by netd only)",
            key,
        )
    try:
        privateKey = serialization.load_pem_private_key(found.group(0), password=None)
    except (ValueError, TypeError) as e:
        raise TLSSetupError(f"{what} {path!r} holds a private key that cannot be read: {e}", key) from None
    if not isinstance(privateKey, _PRIVATE_KEY_TYPES):
        raise TLSSetupError(f"{what} {path!r} holds a {type(privateKey).__name__}, which TLS cannot use", key)
    return privateKey


def _publicBytes(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def keyFileMode(path: str) -> int | None:
    """
    The permission bits of a private key file when its group or everyone
    may read it (what C{chmod 600} would fix), else L{None}.
    """
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    return mode if mode & (stat.S_IRGRP | stat.S_IROTH) else None


@attrs.frozen
class KeyPair:
    """
    A certificate (with the chain that followed it in its file) and its key.
    """

    certificatePath: str
    keyPath: str
    chain: tuple[x509.Certificate, ...]
    key: Any

    @property
    def certificate(self) -> x509.Certificate:
        """
        The end-entity certificate: the first of its file.
        """
        return self.chain[0]


def loadKeyPair(certificatePath: str, keyPath: str, where: str, table: KeyPath = ()) -> KeyPair:
    """
    Load a certificate file and its key file, and check that they belong together.

    @param where: the config key of the pair (C{"tls"}, C{'tls.sni."example.com"'}).
    @param table: its key path (C{("tls", "sni", "example.com")}), for L{TLSSetupError.key}.
    @raise TLSSetupError: naming the key and the file.
    """
    chain = loadCertificates(certificatePath, f"{where}.certificate", table + ("certificate",))
    key = loadPrivateKey(keyPath, f"{where}.private_key", table + ("private_key",))
    if _publicBytes(key.public_key()) != _publicBytes(chain[0].public_key()):
        raise TLSSetupError(
            f"{where}.private_key {keyPath!r} does not match the certificate in {where}.certificate {certificatePath!r}",
            table + ("private_key",),
        )
    return KeyPair(certificatePath, keyPath, tuple(chain), key)


def validityProblem(certificate: x509.Certificate, now: datetime.datetime) -> str | None:
    """
    Why a certificate is not valid at C{now} (expired, not yet valid), or L{None}.
    """
    if now > certificate.not_valid_after_utc:
        return f"expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
    if now < certificate.not_valid_before_utc:
        return f"not valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
    return None


@attrs.frozen
class ClientNames:
    """
    The names of a client certificate that C{client_allow} entries match.

    @ivar dns: its SAN DNS names, lowercased, without a trailing dot.
    @ivar uri: its SAN URIs, as written.
    @ivar cn: its subject CNs, as written; empty when it has a SAN DNS name
        or URI, which then identify it (RFC 6125 6.4.4: a CN is only a
        fallback, and may say anything the CA did not check).
    """

    dns: frozenset[str]
    uri: frozenset[str]
    cn: frozenset[str]

    def describe(self) -> str:
        """
        The names as C{client_allow} entries would write them.
        """
        return ", ".join(f"{kind}:{name}" for kind in ALLOW_TYPES for name in sorted(getattr(self, kind))) or "none"


def certificateNames(certificate: x509.Certificate) -> ClientNames:
    """
    The names a client certificate carries, for C{client_allow}.
    """
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        dns: frozenset[str] = frozenset()
        uri: frozenset[str] = frozenset()
    else:
        dns = frozenset(name.lower().rstrip(".") for name in san.get_values_for_type(x509.DNSName))
        uri = frozenset(san.get_values_for_type(x509.UniformResourceIdentifier))
    cn: frozenset[str] = frozenset()
    if not (dns or uri):
        cn = frozenset(str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    return ClientNames(dns, uri, cn)


def describeSubject(certificate: x509.Certificate) -> str:
    """
    A certificate's subject as an RFC 4514 string (C{CN=netd client}).
    """
    return certificate.subject.rfc4514_string()


# The server side.


_SET_GROUPS = getattr(_openssl, "SSL_CTX_set1_curves_list", None)
"""
OpenSSL's C{SSL_CTX_set1_groups_list} (named for curves in pyOpenSSL's
bindings), for which pyOpenSSL has no public call; without it a context
keeps OpenSSL's default groups.
"""


@functools.cache
def groupList() -> str | None:
    """
    The key-exchange groups every context offers: L{HYBRID_GROUP} then
    L{GROUPS} when this OpenSSL knows the hybrid, else L{GROUPS}; L{None}
    when the groups cannot be set (OpenSSL's defaults stay).
    """
    if _SET_GROUPS is None:
        return None
    probe = SSL.Context(SSL.TLS_SERVER_METHOD)
    for groups in (f"{HYBRID_GROUP}:{GROUPS}", GROUPS):
        if _SET_GROUPS(probe._context, groups.encode("ascii")) == 1:
            return groups
        _openssl.ERR_clear_error()
    return None


def setGroups(context: SSL.Context) -> None:
    """
    Offer the groups of L{groupList} on a context, when they can be set.
    """
    groups = groupList()
    if groups is not None and _SET_GROUPS is not None:
        _SET_GROUPS(context._context, groups.encode("ascii"))



@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The TLS settings of one service, checked and turned into pyOpenSSL
    contexts; makes the server side of each connection.

    @ivar defaultPair: the certificate served when no C{sni} entry matches.
    @ivar pairs: the C{sni} certificates, by lowercased name.
    @ivar made: files that C{certificate = "auto"} made now (empty when it
        reused them, or when the certificate is a file).
    """

    def __init__(
        self,
        options: TLSOptions,
        *,
        serviceName: str,
        log: Logger,
        stateDir: str | None = None,
        now: datetime.datetime | None = None,
    ) -> None:
        """
        Load and check every file the options name.

        @param stateDir: where C{certificate = "auto"} keeps its files (its
            C{tls/} folder); L{netd.tls.devcerts.defaultStateDir} when unset.
        @param now: the time certificates' validity is checked against.
        @raise TLSSetupError: a file is missing, unreadable or malformed, or a
            key does not match its certificate.  An expired or not yet valid
            certificate is only warned about: the deliberately bad ones must
            be servable.
        """
        self.options = options
        self.serviceName = serviceName
        self.log = log
        self.made: list[str] = []
        now = now or utcNow()
        certificate: str = options.certificate
        privateKey: str | None = options.private_key
        if certificate == AUTO:
            stateDir = stateDir or defaultStateDir()
            try:
                files, self.made = autoCertificate(stateDir)
            except OSError as e:
                raise TLSSetupError(
                    f'tls.certificate = "auto": cannot make the development certificate in '
                    f"{os.path.join(stateDir, 'tls')!r}: {e.strerror or e}; set [daemon] state_dir to a writable folder",
                    ("tls", "certificate"),
                ) from None
            certificate, privateKey = files.server, files.serverKey
            # The first start says where it wrote files and how to trust them;
            # later starts only say which set they serve.
            if self.made:
                log.info(
                    "made the development certificate for localhost, 127.0.0.1 and ::1 in {directory}; "
                    "clients trust it with the CA {ca} (curl --cacert {ca}, openssl s_client -CAfile {ca}; "
                    "netd certs prints more)",
                    directory=files.directory,
                    ca=files.ca,
                )
            else:
                log.info(
                    "using the development certificate for localhost, 127.0.0.1 and ::1 in {directory}; "
                    "clients trust it with the CA {ca}",
                    directory=files.directory,
                    ca=files.ca,
                )
        assert privateKey is not None
        self.defaultPair = loadKeyPair(certificate, privateKey, "tls", ("tls",))
        self.pairs = {
            name.lower(): loadKeyPair(entry.certificate, entry.private_key, f'tls.sni."{name}"', ("tls", "sni", name))
            for name, entry in (options.sni or {}).items()
        }
        for where, pair in [("tls", self.defaultPair)] + [(f'tls.sni."{n}"', p) for n, p in self.pairs.items()]:
            mode = keyFileMode(pair.keyPath)
            if mode is not None:
                log.warn(
                    "{where} {path} is readable by its group or by everyone (mode {mode}); "
                    "make it readable by netd's user only (chmod 600)",
                    where=f"{where}.private_key",
                    path=pair.keyPath,
                    mode=f"{mode:04o}",
                )
            problem = validityProblem(pair.certificate, now)
            if problem is not None:
                log.warn(
                    "{where}.certificate {path} {problem}; clients that check it will refuse it",
                    where=where,
                    path=pair.certificatePath,
                    problem=problem,
                )
        self.clientCAs: list[x509.Certificate] = []
        if options.client_ca is not None:
            self.clientCAs = loadCertificates(options.client_ca, "tls.client_ca", ("tls", "client_ca"))
            for ca in self.clientCAs:
                problem = validityProblem(ca, now)
                if problem is not None:
                    log.warn(
                        "tls.client_ca {path}: the CA {subject} {problem}; no client certificate will verify against it",
                        path=options.client_ca,
                        subject=describeSubject(ca),
                        problem=problem,
                    )
        if groupList() is None:
            log.warn("tls: this pyOpenSSL cannot set key-exchange groups; OpenSSL's defaults are offered")
        allow = [parseAllowEntry(entry) for entry in options.client_allow]
        self._allow = ClientNames(
            *(frozenset(name for kind, name in allow if kind == wanted) for wanted in ALLOW_TYPES)
        )
        self._allowAny = not allow
        self._alpn = [name.encode("ascii") for name in options.alpn]
        self._sessionContext = b"netd:" + hashlib.sha256(serviceName.encode("utf-8")).hexdigest()[:24].encode("ascii")
        self._rotation: LoopingCall | None = None
        try:
            self._makeContexts()
        except SSL.Error as e:
            raise TLSSetupError(f"OpenSSL refused the tls settings: {_errorText(e)}") from None

    def _makeContexts(self) -> None:
        """
        Make the contexts of the current certificates: the default one, with
        the SNI callback when there are C{sni} entries, and one per entry.
        Each new context has its own session cache and its own session-ticket
        keys, which OpenSSL makes at random (and never changes by itself).

        @raise SSL.Error: OpenSSL refused a setting.
        """
        defaultContext = self._makeContext(self.defaultPair)
        contexts = {name: self._makeContext(pair) for name, pair in self.pairs.items()}
        if contexts:
            defaultContext.set_tlsext_servername_callback(self._serverNameReceived)
        self.defaultContext, self.contexts = defaultContext, contexts

    def startRotation(self, clock: IReactorTime) -> None:
        """
        Replace the session-ticket keys every C{session_ticket_rotation}
        seconds from now on (see L{rotateSessionKeys}); called when the
        service starts listening.
        """
        period = self.options.session_ticket_rotation
        if self._rotation is not None or not period or not self.options.session_resumption:
            return
        self._rotation = LoopingCall(self.rotateSessionKeys)
        self._rotation.clock = clock
        self._rotation.start(period, now=False)

    def stopRotation(self) -> None:
        """
        Stop replacing the keys: the service no longer listens.
        """
        if self._rotation is not None:
            if self._rotation.running:
                self._rotation.stop()
            self._rotation = None

    def rotateSessionKeys(self) -> None:
        """
        Serve new connections from new contexts of the same certificates,
        which come with new random session-ticket keys and an empty session
        cache: a ticket or session ID from before no longer resumes (that
        client makes one full handshake), and a ticket key that leaks opens
        at most one period of TLS 1.2 sessions.

        pyOpenSSL has no call for OpenSSL's ticket keys or its key callback,
        so the previous key cannot be kept to decrypt for one more period as
        nginx or Go do; the period bounds the lifetime of a session instead.
        Connections already open keep their contexts.
        """
        try:
            self._makeContexts()
        except SSL.Error as e:  # the settings were accepted once; keep what serves
            self.log.error("tls: cannot make new session-ticket keys: {error}", error=_errorText(e))
            return
        self.log.debug("tls: new session-ticket keys; sessions from before are no longer resumed")

    def reloadFiles(self, stateDir: str | None = None) -> ServerTLS:
        """
        Load the certificate, key and CA files again, without using them yet.

        @return: the fresh settings, for L{adopt}.
        @raise TLSSetupError: a file is now missing, unreadable or malformed,
            or a key does not match its certificate; nothing changes then.
        """
        return ServerTLS(self.options, serviceName=self.serviceName, log=self.log, stateDir=stateDir)

    def adopt(self, fresh: ServerTLS) -> None:
        """
        Serve new connections with the contexts of C{fresh} (from
        L{reloadFiles}); connections already open keep theirs.
        """
        self.made = fresh.made
        self.defaultPair = fresh.defaultPair
        self.pairs = fresh.pairs
        self.clientCAs = fresh.clientCAs
        self.contexts = fresh.contexts
        self.defaultContext = fresh.defaultContext

    def _makeContext(self, pair: KeyPair) -> SSL.Context:
        """
        A pyOpenSSL context serving C{pair} with the service's settings.
        """
        options = self.options
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        flags = (
            SSL.OP_NO_SSLv2
            | SSL.OP_NO_SSLv3
            | SSL.OP_NO_COMPRESSION
            | SSL.OP_NO_RENEGOTIATION
            | SSL.OP_SINGLE_ECDH_USE
            | SSL.OP_SINGLE_DH_USE
        )
        if PROFILES[options.profile].serverPreference or options.ciphers is not None:
            # A list of mixed strength, or one the user ordered: its order wins.
            flags |= SSL.OP_CIPHER_SERVER_PREFERENCE
        if not options.session_resumption:
            flags |= SSL.OP_NO_TICKET
        context.set_options(flags)
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
        minVersion = options.minVersion
        context.set_min_proto_version(minVersion.openssl)
        context.set_max_proto_version(options.max_version.openssl if options.max_version else 0)
        ciphers = options.tls12Ciphers
        if ciphers is not None:
            if minVersion < TLSVersion("1.2") and "@SECLEVEL" not in ciphers:
                # OpenSSL 3's default security level refuses TLS 1.0 and 1.1 outright.
                ciphers += ":@SECLEVEL=0"
            context.set_cipher_list(ciphers.encode("ascii"))
        context.set_tls13_ciphersuites(TLS13_CIPHERSUITES.encode("ascii"))
        setGroups(context)
        context.use_certificate(pair.certificate)
        for extra in pair.chain[1:]:
            context.add_extra_chain_cert(extra)
        context.use_privatekey(pair.key)
        context.check_privatekey()
        context.set_session_id(self._sessionContext)
        if options.session_resumption:
            context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
            rotation = options.session_ticket_rotation
            context.set_timeout(min(_SESSION_TIMEOUT, int(rotation)) if rotation >= 1 else _SESSION_TIMEOUT)
        else:
            context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        if self._alpn:
            context.set_alpn_select_callback(self._selectProtocol)
        if options.client_auth != "none":
            assert options.client_ca is not None
            context.load_verify_locations(options.client_ca)
            for ca in self.clientCAs:
                context.add_client_ca(ca)
            mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
            if options.client_auth == "required":
                mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
            context.set_verify(mode, self._verifyClient)
        return context

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """
        The server side of a new connection, on the default context.
        """
        return SSL.Connection(self.defaultContext, None)

    def contextFor(self, serverName: str | None) -> SSL.Context | None:
        """
        The context of the C{sni} entry for a name the client asked for: an
        exact entry, else a wildcard one for its parent; L{None} for the default.
        """
        if not serverName:
            return None
        name = serverName.lower().rstrip(".")
        context = self.contexts.get(name)
        if context is None and "." in name:
            context = self.contexts.get("*." + name.split(".", 1)[1])
        return context

    def _serverNameReceived(self, connection: SSL.Connection) -> None:
        """
        OpenSSL's SNI callback: switch to the certificate for the name asked for.
        """
        raw = connection.get_servername()
        name = raw.decode("ascii", "replace") if raw else None
        context = self.contextFor(name)
        if context is not None:
            connection.set_context(context)

    def _selectProtocol(self, connection: SSL.Connection, offered: list[bytes]) -> bytes:
        """
        OpenSSL's ALPN callback: the first of our protocols the client offers.
        A client offering only others is refused (RFC 7301: a fatal
        no_application_protocol alert).
        """
        for protocol in self._alpn:
            if protocol in offered:
                return protocol
        _setFailure(connection, "alpn_mismatch", "the client offered " + ", ".join(repr(p.decode("ascii", "replace")) for p in offered))
        raise _ALPNMismatch([("netd", "", "no application protocol")])

    def _verifyClient(self, connection: SSL.Connection, certificate: Any, errno: int, depth: int, ok: int) -> bool:
        """
        OpenSSL's verify callback: note why a client certificate fails, and
        check the end-entity certificate against C{client_allow}.
        """
        try:
            if not ok:
                why = _X509_ERRORS.get(errno, f"verify error {errno}")
                subject = describeSubject(certificate.to_cryptography())
                _setFailure(connection, "client_cert_untrusted", f"{why} (certificate {depth} of the chain: {subject})")
                return False
            if depth == 0 and not self._allowAny:
                leaf = certificate.to_cryptography()
                names = certificateNames(leaf)
                allow = self._allow
                if not (names.dns & allow.dns or names.uri & allow.uri or names.cn & allow.cn):
                    _setFailure(
                        connection,
                        "client_not_allowed",
                        f"{describeSubject(leaf)} (names {names.describe()}) carries no name of client_allow",
                    )
                    return False
            return True
        except Exception as e:  # an exception must not escape into OpenSSL
            _setFailure(connection, "client_cert_untrusted", f"cannot check it: {type(e).__name__}: {e}")
            return False


class _ALPNMismatch(SSL.Error):
    """
    Raised from the ALPN callback to make OpenSSL refuse the handshake.
    """


def _setFailure(connection: SSL.Connection, reason: str, detail: str) -> None:
    """
    Tell the connection's protocol why its handshake is about to fail.
    """
    protocol = connection.get_app_data()
    if isinstance(protocol, TLSServerProtocol) and protocol.failure is None:
        protocol.failure = (reason, detail)


def _errorText(error: SSL.Error) -> str:
    """
    The reasons of an OpenSSL error, in OpenSSL's words.
    """
    queue = error.args[0] if error.args else None
    if isinstance(queue, list) and queue:
        return "; ".join(str(entry[-1]) for entry in queue if isinstance(entry, tuple) and entry)
    if isinstance(queue, list):
        return "unexpected end of the connection"
    return str(error) or type(error).__name__


_REASON_PATTERNS = (
    ("not_tls", ("wrong version number", "http request", "https proxy request", "unknown protocol", "packet length too long", "record layer failure", "bad record type", "length too short", "record length mismatch", "unexpected message", "bad packet length")),
    ("version", ("unsupported protocol", "version too low", "protocol version", "tlsv1 alert protocol version", "inappropriate fallback")),
    ("no_shared_cipher", ("no shared cipher", "no suitable signature algorithm", "no shared signature algorithms", "no suitable key share", "no shared groups", "no suitable digest")),
    ("alpn_mismatch", ("no application protocol",)),
    ("client_cert_missing", ("peer did not return a certificate",)),
    ("client_cert_untrusted", ("certificate verify failed",)),
    ("certificate_rejected", ("alert unknown ca", "alert bad certificate", "alert certificate unknown", "alert certificate expired", "alert unsupported certificate", "alert certificate revoked", "alert access denied", "alert decrypt error")),
)


def classifyFailure(reason: Failure) -> tuple[str, str]:
    """
    Why a handshake failed, as one of L{FAILURE_REASONS}, and in OpenSSL's words.
    """
    error = reason.value
    if isinstance(error, SSL.Error):
        text = _errorText(error)
        lowered = text.lower()
        if lowered == "unexpected end of the connection" or "unexpected eof" in lowered:
            return "aborted", "the client closed the connection"
        for name, patterns in _REASON_PATTERNS:
            if any(p in lowered for p in patterns):
                return name, text
        return "protocol_error", text
    return "aborted", reason.getErrorMessage()


class TLSServerProtocol(BufferingTLSTransport):
    """
    The server side of one TLS connection: Twisted's TLS protocol with a
    handshake timeout, and the handshake counted and logged.

    Its per-record path costs less than half of Twisted's (bench/README.md):

      - what the application writes while a read is being delivered (an
        echo's reply, a response) is held and encrypted in one go when the
        read is done, and goes out in the same reactor turn; Twisted would
        schedule a timed call per write to aggregate small writes, which
        still serves writes made at other times;
      - OpenSSL's memory BIOs are asked how many bytes they hold before they
        are read, where Twisted reads until pyOpenSSL raises
        C{WantReadError} (two exceptions per record, each costing about as
        much as decrypting a small record);
      - once the handshake is done, records are read, written and taken
        from the BIOs with OpenSSL's calls directly (pyOpenSSL's bindings,
        and its private C{_ssl}, C{_into_ssl} and C{_from_ssl} of a
        connection, as L{_sessionReused} does), falling back on pyOpenSSL's
        error handling only when a call fails: its wrappers cost more than
        the work of a small record;
      - what a write made is taken from the BIO at once, after its last record.

    @ivar failure: why the handshake is failing, when netd knows better than
        OpenSSL's error (a timeout, a client not allowed): C{(reason, detail)}.
    @ivar tlsDetails: once the handshake is settled, what the connection's
        event in the service's event log says of it: C{version}, C{cipher},
        C{sni}, C{alpn}, C{client_certificate} (its subject) and C{resumed};
        or, when it failed, C{failure} (one of L{FAILURE_REASONS}) and
        C{detail}.  L{None} until then.
    """

    factory: TLSServerFactory
    failure: tuple[str, str] | None = None
    tlsDetails: dict[str, Any] | None = None
    _handshakeTimer: Any = None
    _settled = False
    _peer: IAddress | None = None
    _receiving = False

    def __init__(self, factory: TLSServerFactory, wrappedProtocol: Any, _connectWrapped: bool = True) -> None:
        super().__init__(factory, wrappedProtocol, _connectWrapped)
        self._held: list[bytes] = []
        # An instance attribute, as BufferingTLSTransport's own: the hot path skips a lookup.
        self.write = self._applicationWrite  # type: ignore[method-assign]

    def makeConnection(self, transport: Any) -> None:
        """
        Start the handshake timer, then the handshake: Twisted's
        C{makeConnection} without its first steps, which
        C{ProtocolWrapper.makeConnection} repeats or undoes (it declares
        every interface of the transport one C{directlyProvides} at a time,
        each replacing the last, a tenth of a handshake's CPU; the wrapper
        declares them all again).
        """
        self._peer = transport.getPeer()
        timeout = self.factory.handshakeTimeout
        if timeout:
            self._handshakeTimer = self.factory.clock.callLater(timeout, self._handshakeTimedOut)
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        ProtocolWrapper.makeConnection(self, transport)
        self._checkHandshakeStatus()

    def dataReceived(self, data: bytes) -> None:
        """
        Feed TLS, holding what the application writes meanwhile; then send
        that, and once the handshake is done, count and log it (once).
        """
        self._receiving = True
        try:
            if self._handshakeDone:
                # Twisted's dataReceived after the handshake, with the bytes put in the BIO directly.
                connection = self._tlsConnection
                written = _openssl.BIO_write(connection._into_ssl, data, len(data))
                if written < len(data):
                    connection._handle_bio_errors(connection._into_ssl, written)
                if self._appSendBuffer:
                    self._unbufferPendingWrites()
                self._flushReceiveBIO()
            else:
                super().dataReceived(data)
        finally:
            self._receiving = False
        if self._held:
            self._sendHeld()
        if not self._settled and self._handshakeDone:
            self._handshakeSucceeded()

    def _applicationWrite(self, data: bytes) -> None:
        """
        The application's C{transport.write}: held while a read is being
        delivered, else aggregated by Twisted.
        """
        if self._receiving:
            # A bytearray or memoryview is copied: the caller may reuse it.
            self._held.append(data if type(data) is bytes else bytes(memoryview(data)))
        else:
            self._aggregator.write(data)

    def writeSequence(self, sequence: Any) -> None:
        """
        Write the pieces as one.
        """
        self._applicationWrite(b"".join(sequence))

    def _sendHeld(self) -> None:
        """
        Encrypt and send what was held, after anything Twisted aggregated before.
        """
        held = self._held
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        self._aggregator.flush()
        TLSMemoryBIOProtocol.write(self, data)

    def loseConnection(self) -> None:
        """
        Send what is held first: the close comes after it.
        """
        if self._held:
            self._sendHeld()
        super().loseConnection()

    def unregisterProducer(self) -> None:
        """
        Send what is held first: unregistering a producer after
        C{loseConnection} starts the close.
        """
        if self._held:
            self._sendHeld()
        super().unregisterProducer()

    def _write(self, data: bytes) -> None:
        """
        Hand application bytes to OpenSSL record by record, without copies,
        and send what it made once (Twisted's slices the bytes and takes each
        record from the BIO as it is made).
        """
        if self._lostTLSConnection:
            return
        connection = self._tlsConnection
        ssl = connection._ssl
        size = len(data)
        done = 0
        pointer: Any = data if type(data) is bytes else _ffi.from_buffer(data)
        whole = None
        while done < size:
            result = _openssl.SSL_write(ssl, pointer, min(size - done, _RECORD))
            if result > 0:
                done += result
                if done < size:  # the next record starts inside the same bytes
                    if whole is None:
                        whole = _ffi.from_buffer(data)
                    pointer = whole + done
                continue
            try:
                connection._raise_ssl_error(ssl, result)
            except SSL.WantReadError:
                self._bufferedWrite(data[done:])
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
                return
            break
        self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        """
        Send what OpenSSL has made, if anything, in one write.
        """
        connection = self._tlsConnection
        pending = _openssl.BIO_get_mem_data(connection._from_ssl, _ffi.NULL)
        if pending <= 0:
            return
        transport = self.transport
        assert transport is not None
        if pending > len(_SENT):
            transport.write(connection.bio_read(pending))
            return
        read = _openssl.BIO_read(connection._from_ssl, _SENT, pending)
        transport.write(_ffi.buffer(_SENT, read)[:])

    def _flushReceiveBIO(self) -> None:
        """
        Deliver the application bytes of what arrived, record by record,
        until nothing is left to decrypt; then send what reading made (a
        handshake message, an alert).  As Twisted's, with OpenSSL's
        C{SSL_read} called directly into a shared buffer, and pyOpenSSL's
        error handling only when it returns no bytes.
        """
        connection = self._tlsConnection
        ssl = connection._ssl
        while not self._lostTLSConnection:
            result = _openssl.SSL_read(ssl, _RECEIVED, _RECORD)
            if result > 0:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, _ffi.buffer(_RECEIVED, result)[:])
                if _openssl.SSL_pending(ssl) <= 0 and _openssl.BIO_get_mem_data(connection._into_ssl, _ffi.NULL) <= 0:
                    break
                continue
            try:
                connection._raise_ssl_error(ssl, result)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                # TLS has shut down (close_notify): the loss's reason comes from the transport.
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
            else:
                break
        self._flushSendBIO()

    def _handshakeSucceeded(self) -> None:
        """
        The handshake finished: stop its timer, count it, log what was negotiated.
        """
        self._settled = True
        self._stopTimer()
        factory = self.factory
        factory.counters["tls_handshakes_ok"] += 1
        connection = self._tlsConnection
        resumed = _sessionReused(connection)
        if resumed:
            factory.counters["tls_sessions_resumed"] += 1
        peerCertificate = connection.get_peer_certificate(as_cryptography=True)
        serverName = connection.get_servername()
        alpn = connection.get_alpn_proto_negotiated()
        details = self.tlsDetails = {
            "version": connection.get_protocol_version_name(),
            "cipher": connection.get_cipher_name(),
            "sni": serverName.decode("ascii", "replace") if serverName else None,
            "alpn": alpn.decode("ascii", "replace") if alpn else None,
            "client_certificate": describeSubject(peerCertificate) if peerCertificate is not None else None,
            "resumed": resumed,
        }
        if not logs.debugEnabled:
            return
        factory.log.debug(
            "TLS from {peer}: {tls_version} {tls_cipher}, SNI {tls_sni}, ALPN {tls_alpn}, client {tls_client}{resumption}",
            peer=self._peer,
            tls_version=details["version"],
            tls_cipher=details["cipher"],
            tls_sni=details["sni"],
            tls_alpn=details["alpn"],
            tls_client=details["client_certificate"],
            tls_resumed=resumed,
            resumption=", resumed" if resumed else "",
        )

    def _handshakeFailed(self, reason: Failure) -> None:
        """
        The connection ended before its handshake finished: count and log why.
        """
        self._settled = True
        self._stopTimer()
        name, detail = self.failure or classifyFailure(reason)
        self.tlsDetails = {"failure": name, "detail": detail}
        self.factory.counters[f"tls_handshakes_failed_{name}"] += 1
        self.factory.log.info(
            "TLS handshake from {peer} failed: {tls_failure} ({detail})",
            peer=self._peer,
            tls_failure=name,
            detail=detail,
        )

    def _handshakeTimedOut(self) -> None:
        """
        No handshake within C{handshake_timeout}: drop the connection.
        """
        self._handshakeTimer = None
        if self.failure is None:
            self.failure = ("timeout", f"no handshake within {self.factory.handshakeTimeout:g} seconds")
        self.abortConnection()

    def _stopTimer(self) -> None:
        if self._handshakeTimer is not None:
            self._handshakeTimer.cancel()
            self._handshakeTimer = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Settle the handshake's count if it is not yet, then pass the loss on.
        """
        if not self._settled:
            if self._handshakeDone:
                self._handshakeSucceeded()
            else:
                self._handshakeFailed(self._reason or reason)
        super().connectionLost(reason)


def _sessionReused(connection: SSL.Connection) -> bool:
    """
    Whether a connection resumed an earlier session (pyOpenSSL has no public
    call for OpenSSL's C{SSL_session_reused}; without it, L{False}).
    """
    reused = getattr(_openssl, "SSL_session_reused", None)
    if reused is None:
        return False
    try:
        return bool(reused(connection._ssl))
    except Exception:
        return False


class TLSServerFactory(TLSMemoryBIOFactory):
    """
    Terminates TLS in front of a service's framing (see the module docstring).

    @ivar tls: the service's L{ServerTLS}.
    """

    protocol = TLSServerProtocol

    def __init__(
        self,
        tls: ServerTLS,
        wrappedFactory: IProtocolFactory,
        *,
        clock: IReactorTime,
        counters: Counters,
        log: Logger,
    ) -> None:
        super().__init__(tls, False, wrappedFactory, clock=clock)
        self.tls = tls
        self.clock = clock
        self.counters = counters
        self.log = log
        self.handshakeTimeout = tls.options.handshake_timeout

    def startFactory(self) -> None:
        """
        The service listens: rotate its session-ticket keys on its clock.
        """
        self.tls.startRotation(self.clock)

    def stopFactory(self) -> None:
        """
        The service's last port closed: stop rotating.
        """
        self.tls.stopRotation()


# The client side.


def loadTrustRoot(caBundle: str | None) -> Any:
    """
    What a client checks servers' certificate chains against: every
    certificate of the PEM file C{caBundle}, or the system's CAs when L{None}.

    @return: an L{twisted.internet._sslverify.IOpenSSLTrustRoot}.
    @raise TLSSetupError: the file cannot be read or holds no certificate.
    """
    if caBundle is None:
        return platformTrust()
    certificates = loadCertificates(caBundle, "the CA bundle")
    return trustRootFromCertificates(
        [Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM)) for c in certificates]
    )


def clientCreator(
    serverName: str,
    caBundle: str | None = None,
    *,
    trustRoot: Any = None,
    certificate: str | None = None,
    privateKey: str | None = None,
    alpn: Sequence[str] = (),
) -> IOpenSSLClientConnectionCreator:
    """
    The settings of a client connection that verifies its server: the chain
    against C{caBundle} (or C{trustRoot}, or the system's CAs) and the name
    C{serverName} (a DNS name, sent as SNI, or an IP address) with
    service_identity, through L{optionsForClientTLS}.  A server that fails
    either check is refused; L{describeTLSFailure} says why, for the log.

    @param trustRoot: a trust root from L{loadTrustRoot}, to load a bundle
        once for many connections; do not give C{caBundle} too.
    @param certificate: a PEM client certificate for mutual TLS, with
        C{privateKey} its key file.
    @param alpn: ALPN protocols to offer, preferred first.
    @raise TLSSetupError: a file cannot be read or used.
    """
    if trustRoot is None:
        trustRoot = loadTrustRoot(caBundle)
    elif caBundle is not None:
        raise TypeError("give caBundle or trustRoot, not both")
    extra: dict[str, Any] = {}
    if certificate is not None or privateKey is not None:
        if certificate is None or privateKey is None:
            raise TypeError("a client certificate needs both certificate and privateKey")
        pair = loadKeyPair(certificate, privateKey, "the client")
        # cryptography objects, which pyOpenSSL prefers to its own (deprecated) ones.
        extra = {"certificate": pair.certificate, "privateKey": pair.key}
        if len(pair.chain) > 1:
            extra["extraCertChain"] = list(pair.chain[1:])
    return optionsForClientTLS(
        serverName,
        trustRoot=trustRoot,
        acceptableProtocols=[name.encode("ascii") for name in alpn] or None,
        extraCertificateOptions=extra,
    )


def describeTLSFailure(reason: Failure) -> str | None:
    """
    Why a client TLS connection failed, in words for a log line, or L{None}
    if C{reason} is not a TLS failure: the certificate not valid for the name
    (with the name), or OpenSSL's reason (C{certificate verify failed}, ...).
    """
    error = reason.value
    if isinstance(error, VerificationError):
        names = []
        for mismatch in error.errors:
            identity = getattr(mismatch, "mismatched_id", None)
            value = getattr(identity, "hostname", None) or getattr(identity, "ip", None)
            if isinstance(value, bytes):
                value = value.decode("ascii", "replace")
            names.append(str(value) if value is not None else str(mismatch))
        return f"the server's certificate is not valid for {', '.join(names)} (hostname mismatch)"
    if isinstance(error, SSL.Error):
        return _errorText(error)
    return None
