"""
Loading and checking certificates and private keys: the files a service's
C{tls} table names, read before anything listens, each problem named with its
key and its file (L{TLSSetupError}).
"""

from __future__ import annotations

import datetime
import os
import re
import stat
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID

from netd.config.options import KeyPath
from netd.tls.options import ALLOW_TYPES


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
_PRIVATE_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)


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


def publicKeyBytes(key: PublicKeyTypes) -> bytes:
    """
    A public key as DER bytes, to compare a private key's half with a certificate's.
    """
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
    if publicKeyBytes(key.public_key()) != publicKeyBytes(chain[0].public_key()):
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
