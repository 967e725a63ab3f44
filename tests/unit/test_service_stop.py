"""
Stopping what never started: after a failed start, netd says nothing of
services stopping, since none ran, and does not wait out a lameduck period
for clients it never served.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs, formatEvent

from netd.daemon.daemon import Daemon
from netd.daemon.service import NetService
from netd.testing.memory import UDPMemoryReactorClock, failureOf, resultOf

from .test_service import ECHO, TCP, UDPBindFailsReactor, makeConfig, start

FIRST = {"name": "first", "plugin": "echo", "listen": [TCP]}


def test_failedStartLogsNoStop() -> None:
    """
    When a later service cannot bind, stopping the daemon (as netd does on its way out) logs no "stopped" for any service, the one that had bound included.
    """
    reactor = UDPBindFailsReactor()
    daemon, d = start(makeConfig(FIRST, ECHO), reactor)
    failureOf(d)
    with capturedLogs() as events:
        resultOf(daemon.stopService())
    assert [formatEvent(e) for e in events if e.get("log_namespace", "").startswith("netd.plugins.")] == []
    assert not any(tcp.listening for tcp in reactor.tcpPorts)


def test_failedStartSkipsTheLameduck() -> None:
    """
    After a failed start, the stop finishes at once even with lameduck set: no client was served, so none needs warning.
    """
    reactor = UDPBindFailsReactor()
    daemon, d = start(makeConfig(FIRST, ECHO, lameduck=5), reactor)
    failureOf(d)
    with capturedLogs() as events:
        stopped = daemon.stopService()
    resultOf(stopped)
    assert not any("lameduck" in formatEvent(e) or "more seconds" in formatEvent(e) for e in events)
    assert reactor.getDelayedCalls() == []


def test_listeningButNotStartedServiceClosesQuietly() -> None:
    """
    A service that listens but was never started (a stop between listen and serve) closes its ports on stop and logs no "stopped".
    """
    reactor = UDPMemoryReactorClock()
    daemon = Daemon(makeConfig(ECHO), reactor)
    resultOf(Deferred.fromCoroutine(daemon.listen()))
    [service] = daemon.netServices()
    with capturedLogs() as events:
        resultOf(service.stopService())
    assert service.ports == []
    assert not any(p.listening for p in reactor.tcpPorts)
    assert [formatEvent(e) for e in events] == []


def test_startedServiceStillLogsStopped() -> None:
    """
    A service that ran logs "stopped" when it stops.
    """
    daemon, d = start(makeConfig(ECHO), UDPMemoryReactorClock())
    resultOf(d)
    [service] = daemon.netServices()
    assert isinstance(service, NetService)
    with capturedLogs() as events:
        resultOf(daemon.stopService())
    assert "stopped" in [formatEvent(e) for e in events]
