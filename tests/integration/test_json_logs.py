"""
The log of a real run (start, traffic, a reload, a bad reload, SIGTERM), read
as a pipeline would: every JSON line parses and has the documented fields, and
text lines name their logger by one scheme.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import netd
from netd.logs import LEVELS
from netd.testing.harness import NetdServer

from .conftest import IO_TIMEOUT, connect, echoService, recvExactly, waitForLog, withTestAdmin

SERVICES = {"echo", "lines"}
NETD_ROOT = Path(netd.__file__).parent
NETD_MODULES = {
    "netd." + ".".join(path.relative_to(NETD_ROOT).with_suffix("").parts) for path in NETD_ROOT.rglob("*.py")
}
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
TEXT_LINE = re.compile(r"^\S+ \[(?P<logger>[^\]#]+)#(?P<level>\w+)\] ")


def config(logFormat: str, level: str, services: str) -> str:
    """
    A config with the log format and level given.
    """
    return f'[daemon]\nlog_format = "{logFormat}"\nlog_level = "{level}"\nshutdown_timeout = 1\n\n{services}'


def waitForReport(netd: NetdServer, service: str) -> None:
    """
    Wait until the ports file, rewritten after a reload, names C{service}.
    """
    deadline = time.monotonic() + IO_TIMEOUT
    while service not in json.loads(netd.portsFile.read_text())["services"]:
        assert time.monotonic() < deadline, f"no {service} in the ports file after the reload:\n{netd.log()}"
        time.sleep(0.05)


def fullRun(startNetd: Callable[..., NetdServer], logFormat: str) -> str:
    """
    Run netd through start, TCP and UDP traffic, a reload (a new service and a
    new log level), a bad reload, and a SIGTERM with one connection open; the log.
    """
    echo = echoService("echo", ["tcp:0:interface=127.0.0.1", "udp:0:interface=127.0.0.1"])
    daemon = startNetd(config(logFormat, "debug", echo))
    with connect(daemon.address("echo")) as client:
        client.sendall(b"hello")
        assert recvExactly(client, 5) == b"hello"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(IO_TIMEOUT)
        udp.sendto(b"ping", daemon.address("echo", "udp"))
        assert udp.recv(100) == b"ping"
    assert daemon.configFile is not None
    lines = echoService("lines", ["tcp:0:interface=127.0.0.1"], framing="line")
    daemon.configFile.write_text(withTestAdmin(config(logFormat, "info", echo + lines)))
    os.kill(daemon.pid, signal.SIGHUP)
    waitForReport(daemon, "lines")
    daemon.configFile.write_text(withTestAdmin(config(logFormat, "info", echo + lines + "[[services]]\nname = 3\n")))
    os.kill(daemon.pid, signal.SIGHUP)
    waitForLog(daemon, "the reload failed")
    with connect(daemon.address("echo")) as held:
        held.sendall(b"x")
        assert recvExactly(held, 1) == b"x"
        assert daemon.stop() == 0
    return daemon.log()


def test_everyJSONLineHasTheDocumentedFields(startNetd: Callable[..., NetdServer]) -> None:
    """
    Every line of a real run in JSON parses as one flat object with time, level, logger and msg, no Twisted-internal key, a documented level, and the service on every service line; the last says netd stopped and how long the drain took.
    """
    text = fullRun(startNetd, "json")
    assert "__class_uuid__" not in text and "unpersistable" not in text
    records = []
    for line in text.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert RFC3339_UTC.match(record["time"]), line
        assert record["level"] in LEVELS, line
        assert isinstance(record["logger"], str) and isinstance(record["msg"], str), line
        assert [key for key in record if key.startswith("log_")] == [], line
        assert all(not isinstance(value, dict) or "__class_uuid__" not in value for value in record.values()), line
        if record["logger"] in SERVICES:
            assert record["service"] == record["logger"], line
        else:
            assert record["logger"] in NETD_MODULES or record["logger"].startswith("twisted."), line
        records.append(record)
    loggers = {record["logger"] for record in records}
    assert {"netd.daemon.cli", "netd.daemon.daemon", "echo", "lines"} <= loggers, loggers
    assert any(r["logger"] == "echo" and r["level"] == "debug" for r in records), "no per-connection debug line"
    assert any(r["msg"] == "reload: log level is now info" for r in records)
    [bad] = [r for r in records if r["logger"] == "netd.daemon.daemon" and r["level"] == "error"]
    assert "services[2].name" in bad["msg"], bad
    last = records[-1]
    assert last["logger"] == "netd.daemon.daemon" and last["level"] == "info", last
    assert re.fullmatch(r"netd stopped: drained 1 connection in \d+(\.\d+)? seconds", last["msg"]), last
    assert last["connections"] == 1 and 0.9 <= last["seconds"] < 10, last


def test_textLinesNameTheirLoggerByOneScheme(startNetd: Callable[..., NetdServer]) -> None:
    """
    Every text line of a real run names its logger as netd.MODULE, a service's name or a twisted module, never a class path; the last says netd stopped.
    """
    text = fullRun(startNetd, "text")
    loggers = set()
    lines = [line for line in text.splitlines() if not line.startswith("\t")]
    for line in lines:
        match = TEXT_LINE.match(line)
        assert match is not None, line
        logger = match["logger"]
        assert match["level"] in LEVELS, line
        assert logger in SERVICES or logger in NETD_MODULES or logger.startswith("twisted."), line
        loggers.add(logger)
    assert {"netd.daemon.cli", "netd.daemon.daemon", "echo", "lines"} <= loggers, loggers
    assert re.search(
        r"\[netd\.daemon\.daemon#info\] netd stopped: drained 1 connection in \d+(\.\d+)? seconds$", lines[-1]
    ), lines[-1]


@pytest.mark.parametrize("reactor", ["uvloop", "netd"])
@pytest.mark.parametrize("logFormat", ["text", "json"])
def test_stoppedWithNothingOpen(
    startNetd: Callable[..., NetdServer], monkeypatch: pytest.MonkeyPatch, logFormat: str, reactor: str
) -> None:
    """
    Stopped with no connection open, netd's last line says so, in either format and on either reactor (Twisted's own ends with "Main loop terminated.").
    """
    monkeypatch.setenv("NETD_REACTOR", reactor)
    daemon = startNetd(config(logFormat, "info", echoService("echo", ["tcp:0:interface=127.0.0.1"])))
    assert daemon.stop() == 0
    last = daemon.log().splitlines()[-1]
    message = json.loads(last)["msg"] if logFormat == "json" else last
    assert re.search(r"netd stopped: no connections were open \(\d+(\.\d+)? seconds\)$", message), last
