"""
Log output: text or JSON lines, the level filter, and the port chatter filter.
"""

from __future__ import annotations

import io
import json

from twisted.logger import LogLevel, LogPublisher

from netd import logs
from netd.logs import ServiceLogger, makeObserver, setLogLevel


def publisherTo(logFormat: str, level: str) -> tuple[LogPublisher, io.StringIO]:
    """
    A publisher whose events go through netd's observer into a string.
    """
    stream = io.StringIO()
    publisher = LogPublisher(makeObserver(logFormat, level, stream))
    return publisher, stream


def test_jsonLinesCarryTheServiceField() -> None:
    """
    With log_format json every event is one JSON object per line, keeping the service and the event's own fields.
    """
    publisher, stream = publisherTo("json", "info")
    log = ServiceLogger("netd.plugins.echo", "echo-a")
    log.observer = publisher
    log.info("listening on {address}", address="tcp 127.0.0.1:7")
    log.info("closing {peer}", peer="x")
    lines = stream.getvalue().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["service"] for e in events] == ["echo-a", "echo-a"]
    assert events[0]["address"] == "tcp 127.0.0.1:7"


def test_textLinesNameTheServiceAndLevel() -> None:
    """
    Text lines start with the service and level, and events below the level are not written.
    """
    publisher, stream = publisherTo("text", "info")
    log = ServiceLogger("netd.plugins.echo", "echo-a")
    log.observer = publisher
    log.debug("not shown")
    log.warn("closing connection from {peer}", peer="127.0.0.1")
    [line] = stream.getvalue().splitlines()
    assert "[echo-a#warn] closing connection from 127.0.0.1" in line


def test_portChatterDropped() -> None:
    """
    Twisted's legacy "starting on" and "Port Closed" lines are dropped; other legacy lines are kept.
    """
    publisher, stream = publisherTo("text", "info")
    events: list[dict[str, object]] = []
    legacy = LogPublisher(publisher, events.append)
    for text in ("_UDPSocket starting on 40000", "(UDP Port 40000 Closed)", "(TCP Port 7 Closed)", "something else happened"):
        legacy({"log_namespace": "log_legacy", "log_text": text, "log_format": "{log_text}", "log_level": LogLevel.info, "log_time": 0.0, "log_system": "-"})
    assert stream.getvalue().count("\n") == 1
    assert "something else happened" in stream.getvalue()
    assert len(events) == 4


def test_debugFlagFollowsTheConfiguredLevel() -> None:
    """
    The cheap debugEnabled flag is on exactly when the configured level writes debug events, at start and on reload.
    """
    makeObserver("text", "info", io.StringIO())
    assert not logs.debugEnabled
    setLogLevel("debug")
    assert logs.debugEnabled
    setLogLevel("warn")
    assert not logs.debugEnabled
    makeObserver("json", "debug", io.StringIO())
    assert logs.debugEnabled
