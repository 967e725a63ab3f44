"""
Why a TLS handshake failed, as one of L{FAILURE_REASONS} (the suffixes of the
C{tls_handshakes_failed_REASON} counters), from OpenSSL's error or from what
netd noted while the handshake ran (L{noteFailure}).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from OpenSSL import SSL
from twisted.python.failure import Failure

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

X509_ERRORS = {
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


@runtime_checkable
class NotesFailure(Protocol):
    """
    The protocol of a server connection (its pyOpenSSL app data), which
    keeps why its handshake is failing when netd knows better than OpenSSL.
    """

    failure: tuple[str, str] | None


@runtime_checkable
class WatchesHandshake(NotesFailure, Protocol):
    """
    A L{NotesFailure} also told when its handshake succeeds.
    """

    def handshakeSucceeded(self) -> None:
        """
        The handshake finished.
        """


def noteFailure(connection: SSL.Connection, reason: str, detail: str) -> None:
    """
    Tell the connection's protocol why its handshake is about to fail (the
    first reason noted wins).
    """
    protocol = connection.get_app_data()
    if isinstance(protocol, NotesFailure) and protocol.failure is None:
        protocol.failure = (reason, detail)


def errorText(error: SSL.Error) -> str:
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
    (
        "not_tls",
        (
            "wrong version number",
            "http request",
            "https proxy request",
            "unknown protocol",
            "packet length too long",
            "record layer failure",
            "bad record type",
            "length too short",
            "record length mismatch",
            "unexpected message",
            "bad packet length",
        ),
    ),
    (
        "version",
        (
            "unsupported protocol",
            "version too low",
            "protocol version",
            "tlsv1 alert protocol version",
            "inappropriate fallback",
        ),
    ),
    (
        "no_shared_cipher",
        (
            "no shared cipher",
            "no suitable signature algorithm",
            "no shared signature algorithms",
            "no suitable key share",
            "no shared groups",
            "no suitable digest",
        ),
    ),
    ("alpn_mismatch", ("no application protocol",)),
    ("client_cert_missing", ("peer did not return a certificate",)),
    ("client_cert_untrusted", ("certificate verify failed",)),
    (
        "certificate_rejected",
        (
            "alert unknown ca",
            "alert bad certificate",
            "alert certificate unknown",
            "alert certificate expired",
            "alert unsupported certificate",
            "alert certificate revoked",
            "alert access denied",
            "alert decrypt error",
        ),
    ),
)


def classifyFailure(reason: Failure) -> tuple[str, str]:
    """
    Why a handshake failed, as one of L{FAILURE_REASONS}, and in OpenSSL's words.
    """
    error = reason.value
    if isinstance(error, SSL.Error):
        return classifyError(error)
    return "aborted", reason.getErrorMessage()


def classifyError(error: SSL.Error) -> tuple[str, str]:
    """
    Why a handshake failed with an OpenSSL error, as one of
    L{FAILURE_REASONS}, and in OpenSSL's words.
    """
    text = errorText(error)
    lowered = text.lower()
    if lowered == "unexpected end of the connection" or "unexpected eof" in lowered:
        return "aborted", "the client closed the connection"
    for name, patterns in _REASON_PATTERNS:
        if any(p in lowered for p in patterns):
            return name, text
    return "protocol_error", text
