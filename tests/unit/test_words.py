"""
L{netd.words}: how netd counts things in its messages.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.logger import capturedLogs, formatEvent

from netd import logs
from netd.testing.memory import UDPMemoryReactorClock, resultOf
from netd.words import counted

from .test_limits import _closedEvent, accept, makeStack
from .test_service import ECHO, makeConfig, start, startedWithConnection


@pytest.mark.parametrize(
    ("count", "noun", "plural", "expected"),
    [
        (1, "service", None, "1 service"),
        (0, "service", None, "0 services"),
        (2, "open connection", None, "2 open connections"),
        (1, "address", "addresses", "1 address"),
        (3, "address", "addresses", "3 addresses"),
        (1.0, "second", None, "1.0 seconds"),
        (0.5, "second", None, "0.5 seconds"),
    ],
)
def test_counted(count: float, noun: str, plural: str | None, expected: str) -> None:
    """
    counted puts the noun in the singular for exactly one (the integer 1) and in the plural, given or with an s, otherwise.
    """
    assert counted(count, noun, plural) == expected


def messages(events: list[dict[str, Any]]) -> list[str]:
    """
    The rendered text of captured log events.
    """
    return [formatEvent(e) for e in events]


def test_drainCountsOneConnection() -> None:
    """
    Stopping with one open connection logs "for 1 open connection" and, at the timeout, "closing 1 connection still open", keeping the count as a field.
    """
    reactor, daemon, connection = startedWithConnection(5)
    with capturedLogs() as events:
        stopped = daemon.stopService()
        reactor.advance(5)
        assert connection.finishClose()
        resultOf(stopped)
    text = messages(events)
    assert "waiting up to 5.0 seconds for 1 open connection" in text
    assert "closing 1 connection still open after 5.0 seconds" in text
    assert [e["count"] for e in events if "count" in e][:2] == [1, 1]


def test_readyLineCountsOneService() -> None:
    """
    A daemon with one service logs that it is ready with "1 service", not "1 services".
    """
    with capturedLogs() as events:
        daemon, d = start(makeConfig(ECHO), UDPMemoryReactorClock())
        resultOf(d)
    assert "netd is ready: 1 service from test.toml" in messages(events)
    resultOf(daemon.stopService())


def test_closedConnectionCountsOneByte(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A connection that carried one byte each way is logged as "1 byte in, 1 byte out", its byte counts staying fields.
    """
    monkeypatch.setattr(logs, "debugEnabled", True)
    limiter, _, _, clock = makeStack()
    with capturedLogs() as events:
        connection = accept(limiter)
        connection.receive(b"x")
        connection.protocol.write(b"y")
        connection.peerClosed()
    closed = _closedEvent(events)
    assert formatEvent(closed).endswith(": 1 byte in, 1 byte out")
    assert (closed["bytes_in"], closed["bytes_out"]) == (1, 1)
