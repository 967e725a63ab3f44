"""
The client side of TLS, for plugins that connect out (the DNS proxy's TLS
upstreams): the settings of a verified connection (L{clientCreator}) and why
one failed, in words (L{describeTLSFailure}).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust, trustRootFromCertificates
from twisted.python.failure import Failure

from netd.tls.failures import errorText
from netd.tls.keys import loadCertificates, loadKeyPair


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
    The settings of a client connection that verifies its server (the chain
    against C{caBundle}, C{trustRoot} or the system's CAs, and the name
    C{serverName} with service_identity, through L{optionsForClientTLS}); a
    server that fails either check is refused, L{describeTLSFailure} says why.

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
        return errorText(error)
    return None
