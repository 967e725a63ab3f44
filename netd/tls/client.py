"""
The client side of TLS, for plugins that connect out (the DNS proxy's TLS
upstreams, the proxy's C{upstream_tls}): the settings of a connection
(L{clientCreator}, L{clientCreatorFor} from a L{ClientTLSOptions} table) and
why one failed, in words (L{describeTLSFailure}).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import attrs
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.internet.ssl import (
    TLSVersion as TwistedTLSVersion,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.config.options import KeyPath, renderPath
from netd.tls.failures import errorText
from netd.tls.keys import loadCertificates, loadKeyPair
from netd.tls.options import ClientTLSOptions, TLSVersion

_TWISTED_VERSIONS = {
    "1.0": TwistedTLSVersion.TLSv1_0,
    "1.1": TwistedTLSVersion.TLSv1_1,
    "1.2": TwistedTLSVersion.TLSv1_2,
    "1.3": TwistedTLSVersion.TLSv1_3,
}


def loadTrustRoot(caBundle: str | None, what: str = "the CA bundle", key: KeyPath = ()) -> Any:
    """
    What a client checks servers' certificate chains against: every
    certificate of the PEM file C{caBundle}, or the system's CAs when L{None}.

    @param what: how messages name the file; C{key} its key path.
    @return: an L{twisted.internet._sslverify.IOpenSSLTrustRoot}.
    @raise TLSSetupError: the file cannot be read or holds no certificate.
    """
    if caBundle is None:
        return platformTrust()
    certificates = loadCertificates(caBundle, what, key)
    return trustRootFromCertificates(
        [Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM)) for c in certificates]
    )


@implementer(IOpenSSLClientConnectionCreator)
@attrs.frozen
class UnverifiedClient:
    """
    The settings of a client connection that checks nothing of its server
    (C{verify = false}): C{options} (made with C{verify=False}), and the
    server name sent as SNI when it is a DNS name.
    """

    options: CertificateOptions
    serverName: str

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """
        A connection of C{options}, with the server name as SNI.
        """
        connection = self.options.clientConnectionForTLS(tlsProtocol)
        if not _isAddress(self.serverName):
            connection.set_tlsext_host_name(self.serverName.encode("idna"))
        return connection


def _isAddress(name: str) -> bool:
    """
    Whether C{name} is an IP address (sent as no SNI, checked against IP SANs).
    """
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def clientCreator(
    serverName: str,
    caBundle: str | None = None,
    *,
    trustRoot: Any = None,
    certificate: str | None = None,
    privateKey: str | None = None,
    alpn: Sequence[str] = (),
    minVersion: TLSVersion | None = None,
    maxVersion: TLSVersion | None = None,
    verify: bool = True,
    table: KeyPath = (),
) -> IOpenSSLClientConnectionCreator:
    """
    The settings of a client connection that verifies its server (the chain
    against C{caBundle}, C{trustRoot} or the system's CAs, and the name
    C{serverName} with service_identity, through L{optionsForClientTLS}); a
    server that fails either check is refused, L{describeTLSFailure} says why.

    @param trustRoot: a trust root from L{loadTrustRoot}, to load a bundle
        once for many connections; do not give C{caBundle} too.
    @param certificate: a PEM client certificate for mutual TLS, with
        C{privateKey} its key file.
    @param alpn: ALPN protocols to offer, preferred first.
    @param minVersion: the oldest version offered (Twisted's default, TLS
        1.2, when L{None}); C{maxVersion} the newest.
    @param verify: L{False} checks neither chain nor name (L{UnverifiedClient}).
    @param table: the key path of these settings in a service's table, which
        errors name (C{("upstream_tls",)}); C{()} names them "the client".
    @raise TLSSetupError: a file cannot be read or used.
    """
    where = renderPath(table) if table else "the client"
    if not verify:
        if caBundle is not None or trustRoot is not None:
            raise TypeError("verify=False checks no chain: give neither caBundle nor trustRoot")
    elif trustRoot is None:
        trustRoot = loadTrustRoot(caBundle, f"{where}.ca_bundle" if table else "the CA bundle", table + ("ca_bundle",))
    elif caBundle is not None:
        raise TypeError("give caBundle or trustRoot, not both")
    extra: dict[str, Any] = {}
    if certificate is not None or privateKey is not None:
        if certificate is None or privateKey is None:
            raise TypeError("a client certificate needs both certificate and privateKey")
        pair = loadKeyPair(certificate, privateKey, where, table)
        # cryptography objects, which pyOpenSSL prefers to its own (deprecated) ones.
        extra = {"certificate": pair.certificate, "privateKey": pair.key}
        if len(pair.chain) > 1:
            extra["extraCertChain"] = list(pair.chain[1:])
    if minVersion is not None:
        extra["insecurelyLowerMinimumTo"] = _TWISTED_VERSIONS[minVersion.name]
    if maxVersion is not None:
        extra["lowerMaximumSecurityTo"] = _TWISTED_VERSIONS[maxVersion.name]
    protocols = [name.encode("ascii") for name in alpn] or None
    if not verify:
        return UnverifiedClient(CertificateOptions(verify=False, acceptableProtocols=protocols, **extra), serverName)
    return optionsForClientTLS(
        serverName, trustRoot=trustRoot, acceptableProtocols=protocols, extraCertificateOptions=extra
    )


def clientCreatorFor(options: ClientTLSOptions, serverName: str, table: KeyPath) -> IOpenSSLClientConnectionCreator:
    """
    The settings of a client connection as a L{ClientTLSOptions} table at
    C{table} says, to C{serverName} unless the table names its own.

    @raise TLSSetupError: a file cannot be read or used, naming its key path.
    """
    return clientCreator(
        options.server_name or serverName,
        options.ca_bundle if options.verify else None,
        certificate=options.certificate,
        privateKey=options.private_key,
        alpn=options.alpn,
        minVersion=options.min_version,
        maxVersion=options.max_version,
        verify=options.verify,
        table=table,
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
        return errorText(error)
    return None
