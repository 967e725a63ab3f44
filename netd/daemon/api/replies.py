"""
The answers of the control API: one L{Reply} value, built as JSON, written
through Twisted's request or, before Twisted's request has begun, as raw bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.web.http import RESPONSES
from twisted.web.server import Request

JSON_CONTENT_TYPE = "application/json"


@attrs.frozen
class Reply:
    """
    One HTTP answer: status, body, content type and extra headers.
    """

    code: int
    body: bytes
    contentType: str = JSON_CONTENT_TYPE
    headers: Mapping[str, str] = attrs.field(factory=dict)


def jsonReply(code: int, data: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Reply:
    """
    A JSON answer, indented for people reading it with curl.
    """
    body = (json.dumps(data, indent=2, default=str) + "\n").encode("utf-8")
    return Reply(code, body, JSON_CONTENT_TYPE, dict(headers or {}))


def errorReply(code: int, error: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any) -> Reply:
    """
    A JSON error answer: C{{"error": SHORT, "message": WHY, ...}}.
    """
    return jsonReply(code, {"error": error, "message": message, **extra}, headers)


def text(value: bytes) -> str:
    """
    Request bytes for a message, unreadable bytes escaped.
    """
    return value.decode("utf-8", "backslashreplace")


def notAllowed(request: Request, allowed: list[str], why: str | None = None) -> Reply:
    """
    The 405 answer to a method that is not one of C{allowed}.
    """
    return errorReply(
        405,
        "method not allowed",
        why or f"{text(request.path)} takes {' or '.join(allowed)}, not {text(request.method)}",
        {"Allow": ", ".join(allowed)},
    )


def rawResponse(reply: Reply) -> bytes:
    """
    C{reply} as an HTTP/1.1 response that closes the connection, for answers
    given before Twisted's request has begun.
    """
    lines = [
        f"HTTP/1.1 {reply.code} {RESPONSES.get(reply.code, b'Error').decode('ascii')}",
        f"Content-Type: {reply.contentType}",
        f"Content-Length: {len(reply.body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ] + [f"{name}: {value}" for name, value in reply.headers.items()]
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + reply.body
