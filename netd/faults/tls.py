"""
TLS handshake faults, on a service with a C{tls} table: they see the raw bytes
of the handshake, nearest the TLS engine, on the connections they apply to.
A first byte that cannot start a TLS record is left to the TLS engine to
refuse (C{not_tls}), and the fault is not counted as applied.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from netd.config.options import option
from netd.faults.base import ServiceShape
from netd.faults.stream import ConnectionPipes, Effect, HandshakeFilter, StreamFault

TLS_HANDSHAKE = 22
"""
The content type of a TLS handshake record (the first byte of a ClientHello).
"""

TLS_ALERT = 21
"""
The content type of a TLS alert record.
"""

RECORD_HEADER = 5
"""
Bytes of a TLS record header: type, legacy version (2), length (2).
"""

TLS_ALERTS: dict[str, int] = {
    "close_notify": 0,
    "unexpected_message": 10,
    "bad_record_mac": 20,
    "record_overflow": 22,
    "handshake_failure": 40,
    "bad_certificate": 42,
    "unsupported_certificate": 43,
    "certificate_revoked": 44,
    "certificate_expired": 45,
    "certificate_unknown": 46,
    "illegal_parameter": 47,
    "unknown_ca": 48,
    "access_denied": 49,
    "decode_error": 50,
    "decrypt_error": 51,
    "protocol_version": 70,
    "insufficient_security": 71,
    "internal_error": 80,
    "inappropriate_fallback": 86,
    "user_canceled": 90,
    "missing_extension": 109,
    "unsupported_extension": 110,
    "unrecognized_name": 112,
    "unknown_psk_identity": 115,
    "certificate_required": 116,
    "no_application_protocol": 120,
}
"""
TLS alert descriptions by their RFC 8446 / RFC 5246 names.
"""
TLSAlert = Literal[
    "close_notify",
    "unexpected_message",
    "bad_record_mac",
    "record_overflow",
    "handshake_failure",
    "bad_certificate",
    "unsupported_certificate",
    "certificate_revoked",
    "certificate_expired",
    "certificate_unknown",
    "illegal_parameter",
    "unknown_ca",
    "access_denied",
    "decode_error",
    "decrypt_error",
    "protocol_version",
    "insufficient_security",
    "internal_error",
    "inappropriate_fallback",
    "user_canceled",
    "missing_extension",
    "unsupported_extension",
    "unrecognized_name",
    "unknown_psk_identity",
    "certificate_required",
    "no_application_protocol",
]


def alertRecord(alert: str) -> bytes:
    """
    A plaintext fatal TLS alert record, as a server sends one in answer to a
    ClientHello it refuses: content type 21, legacy version 0x0303, level 2
    (fatal), the description of C{alert} (a name of L{TLS_ALERTS}).
    """
    return bytes([TLS_ALERT, 3, 3, 0, 2, 2, TLS_ALERTS[alert]])


@attrs.frozen
class TLSFault(StreamFault):
    """
    A fault on the TLS handshake; the first one that applies to a connection acts.
    """

    directions = ("both",)

    def misfit(self, shape: ServiceShape) -> str | None:
        """
        It needs stream connections, and TLS on them.
        """
        problem = super().misfit(shape)
        if problem is None and not shape.tls:
            return f"{self.typeName} acts on the TLS handshake, and this service has no tls table"
        return problem

    def join(self, connection: ConnectionPipes, effect: Effect) -> None:
        if connection.tls is None:
            connection.tls = self.onHandshake(connection, effect)

    def onHandshake(self, connection: ConnectionPipes, effect: Effect) -> HandshakeFilter:
        """
        What sees the handshake's bytes on C{connection}.
        """
        raise NotImplementedError()


@attrs.frozen
class HelloAnswering(TLSFault):
    """
    A fault that answers the ClientHello itself, then closes.
    """

    def onHandshake(self, connection: ConnectionPipes, effect: Effect) -> HandshakeFilter:
        return _HelloAnswer(connection, effect, self)

    def answer(self) -> tuple[bytes, dict[str, Any]]:
        """
        The bytes sent in answer, and the details of the fault's event.
        """
        raise NotImplementedError()


@attrs.frozen
class TLSStall(TLSFault):
    typeName = "tls_stall"
    summary = "Read the ClientHello, send the first record of the server's answer (its ServerHello), then nothing."

    def onHandshake(self, connection: ConnectionPipes, effect: Effect) -> HandshakeFilter:
        return _FirstRecordOnly(connection, effect)


@attrs.frozen
class TLSAbort(HelloAnswering):
    typeName = "tls_abort"
    summary = "Answer the ClientHello with a fatal TLS alert, then close."
    alert: TLSAlert = option("handshake_failure", help="The alert sent, by its RFC 8446 name.")

    def answer(self) -> tuple[bytes, dict[str, Any]]:
        return alertRecord(self.alert), {"alert": self.alert}


@attrs.frozen
class TLSGarbage(HelloAnswering):
    typeName = "tls_garbage"
    summary = "Answer the ClientHello with plain text instead of TLS, then close."
    data: str = option("HTTP/1.1 400 Bad Request\r\n\r\nthis is not TLS\r\n", help="The text sent (UTF-8).")

    def answer(self) -> tuple[bytes, dict[str, Any]]:
        answer = self.data.encode("utf-8")
        return answer, {"bytes": len(answer)}


class _HelloAnswer:
    """
    A L{HelloAnswering} fault on one connection: it holds the ClientHello
    back, and answers it.
    """

    def __init__(self, connection: ConnectionPipes, effect: Effect, fault: HelloAnswering) -> None:
        self.connection = connection
        self.effect = effect
        self.fault = fault
        self.done = False
        self._buffer = bytearray()

    def inbound(self, data: bytes) -> bytes:
        if self.done or not data:
            return data
        self._buffer += data
        if self._buffer[0] != TLS_HANDSHAKE:
            self.done = True
            data, self._buffer = bytes(self._buffer), bytearray()
            return data
        if len(self._buffer) < RECORD_HEADER:
            return b""
        length = int.from_bytes(self._buffer[3:5], "big")
        if len(self._buffer) < RECORD_HEADER + length:
            return b""
        self.done = True
        self._buffer = bytearray()
        answer, details = self.fault.answer()
        self.connection.answerHandshake(self.effect, answer, **details)
        return b""

    def outbound(self, data: bytes) -> bytes:
        return data


class _FirstRecordOnly:
    """
    A C{tls_stall} on one connection: the first record the server writes
    passes, then nothing.
    """

    def __init__(self, connection: ConnectionPipes, effect: Effect) -> None:
        self.connection = connection
        self.effect = effect
        self._header = bytearray()
        self._sent = 0
        self._recordEnd: int | None = None
        self.stalled = False

    def inbound(self, data: bytes) -> bytes:
        return data

    def outbound(self, data: bytes) -> bytes:
        if self.stalled:
            return b""
        if self._recordEnd is None:
            self._header += data[: RECORD_HEADER - len(self._header)]
            if len(self._header) == RECORD_HEADER:
                self._recordEnd = RECORD_HEADER + int.from_bytes(self._header[3:5], "big")
        end = self._recordEnd if self._recordEnd is not None else RECORD_HEADER
        passing = data[: end - self._sent]
        self._sent += len(passing)
        if self._recordEnd is not None and self._sent >= self._recordEnd:
            self.stalled = True
            self.connection.report(self.effect, record_bytes=self._recordEnd)
        return passing
