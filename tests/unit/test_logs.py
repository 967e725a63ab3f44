"""
Log output: text or JSON lines, the logger naming scheme, the level filter, and
the chatter filter.
"""

from __future__ import annotations

import importlib
import io
import json
import pkgutil
import re
from pathlib import Path
from types import ModuleType

from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python import log as legacyLog
from twisted.python.failure import Failure

import netd
import netd_plugins
from netd import logs
from netd.logs import LEVELS, RESERVED, ServiceLogger, makeObserver, setLogLevel

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def publisherTo(logFormat: str, level: str) -> tuple[LogPublisher, io.StringIO]:
    """
    A publisher whose events go through netd's observer into a string.
    """
    stream = io.StringIO()
    publisher = LogPublisher(makeObserver(logFormat, level, stream))
    return publisher, stream


def jsonLines(stream: io.StringIO) -> list[dict[str, object]]:
    """
    Every line written, each parsed as one JSON object.
    """
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class Unserialisable:
    """
    A field value JSON has no form for.
    """

    def __str__(self) -> str:
        return "as str"


class Broken:
    """
    A field value whose text form raises.
    """

    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_jsonLineIsFlatWithDocumentedFields() -> None:
    """
    A JSON line has time (RFC 3339, UTC), level, logger, msg (the rendered message) and the event's own fields as plain values, and nothing of Twisted's.
    """
    publisher, stream = publisherTo("json", "info")
    log = Logger(namespace="netd.daemon.daemon", observer=publisher)
    log.info(
        "got {count} from {peer}",
        count=3,
        peer="127.0.0.1",
        raw=b"caf\xc3\xa9 \xff",
        pair=("a", 1),
        table={"k": [b"v", None, True]},
        odd=Unserialisable(),
        ratio=float("nan"),
    )
    [record] = jsonLines(stream)
    assert list(record) == ["time", "level", "logger", "msg", "count", "peer", "raw", "pair", "table", "odd", "ratio"]
    assert RFC3339_UTC.match(str(record["time"])), record["time"]
    assert record["level"] == "info"
    assert record["logger"] == "netd.daemon.daemon"
    assert record["msg"] == "got 3 from 127.0.0.1"
    assert record["count"] == 3
    assert record["raw"] == "café \\xff"
    assert record["pair"] == ["a", 1]
    assert record["table"] == {"k": ["v", None, True]}
    assert record["odd"] == "as str"
    assert record["ratio"] == "nan"
    for forbidden in ("log_", "__class_uuid__", "unpersistable", "log_flattened"):
        assert forbidden not in stream.getvalue()


def test_jsonLineWithAFieldJSONCannotCarry() -> None:
    """
    A field that cannot be written (a list that contains itself, an object whose str raises) does not silence the log: the line keeps its message and says why fields are missing.
    """
    publisher, stream = publisherTo("json", "info")
    log = ServiceLogger("echo")
    log.observer = publisher
    loop: list[object] = []
    loop.append(loop)
    log.info("odd fields", loop=loop)
    log.info("still logging", broken=Broken())
    first, second = jsonLines(stream)
    assert (first["msg"], first["service"], first["logger"]) == ("odd fields", "echo", "echo")
    assert "loop" not in first and "recursion" in str(first["fields_error"])
    assert second["msg"] == "still logging"
    assert "Broken" in str(second["broken"])


def test_jsonTimeIsUTC() -> None:
    """
    The time field is the event's time in UTC with microseconds.
    """
    publisher, stream = publisherTo("json", "info")
    publisher(
        {
            "log_time": 1796605323.456789,
            "log_level": LogLevel.warn,
            "log_namespace": "netd.daemon.admin",
            "log_format": "x",
        }
    )
    [record] = jsonLines(stream)
    assert record["time"] == "2026-12-07T01:02:03.456789Z"
    assert record["level"] == "warn"


def test_jsonLinesCarryTheServiceField() -> None:
    """
    A service's lines have the service's name as both their logger and their service field, and keep the event's own fields.
    """
    publisher, stream = publisherTo("json", "info")
    log = ServiceLogger("echo-a")
    log.observer = publisher
    log.info("listening on {address}", address="tcp 127.0.0.1:7")
    log.info("closing {peer}", peer="x")
    events = jsonLines(stream)
    assert [(e["logger"], e["service"]) for e in events] == [("echo-a", "echo-a"), ("echo-a", "echo-a")]
    assert events[0]["address"] == "tcp 127.0.0.1:7"
    assert events[0]["msg"] == "listening on tcp 127.0.0.1:7"


def test_jsonFailureHasATracebackField() -> None:
    """
    A logged failure's traceback is a traceback string field, not part of msg.
    """
    publisher, stream = publisherTo("json", "info")
    log = Logger(namespace="netd.daemon.cli", observer=publisher)
    try:
        int("x")
    except ValueError:
        log.failure("the reload failed")
    [record] = jsonLines(stream)
    assert record["level"] == "critical"
    assert record["msg"] == "the reload failed"
    assert "ValueError: invalid literal" in str(record["traceback"])
    assert str(record["traceback"]).startswith("Traceback")


def test_jsonLegacyEvents() -> None:
    """
    Events sent through twisted.python.log have the logger twisted.python.log, their system as a field, a failure's traceback as traceback, and none of the legacy API's own keys.
    """
    publisher, stream = publisherTo("json", "info")
    legacy = legacyLog.LogPublisher(observerPublisher=publisher, publishPublisher=publisher)
    legacy.msg("plain", system="-")
    legacy.msg(failure=Failure(ValueError("boom")), isError=1, why=None, system="EchoProtocol,3,127.0.0.1")
    plain, error = jsonLines(stream)
    assert plain == {"time": plain["time"], "level": "info", "logger": "twisted.python.log", "msg": "plain"}
    assert error["logger"] == "twisted.python.log"
    assert error["level"] == "critical"
    assert error["system"] == "EchoProtocol,3,127.0.0.1"
    assert error["msg"] == "Unhandled Error"
    assert "ValueError: boom" in str(error["traceback"])
    assert set(error) == {"time", "level", "logger", "system", "msg", "traceback"}


def test_jsonFieldNamedLikeALineField() -> None:
    """
    An event's own field named like one of the line's fields is kept as field_NAME, hiding neither.
    """
    publisher, stream = publisherTo("json", "info")
    Logger(namespace="netd.daemon.daemon", observer=publisher).info(
        "at {time}: {msg}", time="noon", msg="m", logger="x", traceback="t"
    )
    [record] = jsonLines(stream)
    assert record["msg"] == "at noon: m"
    assert record["logger"] == "netd.daemon.daemon"
    assert RFC3339_UTC.match(str(record["time"]))
    assert (record["field_time"], record["field_msg"], record["field_logger"], record["field_traceback"]) == (
        "noon",
        "m",
        "x",
        "t",
    )


def test_jsonLevelsAreTwistedsNames() -> None:
    """
    The documented levels are Twisted's level names, least severe first, and each is written as such.
    """
    assert LEVELS == ("debug", "info", "warn", "error", "critical")
    publisher, stream = publisherTo("json", "debug")
    log = Logger(namespace="netd.daemon.daemon", observer=publisher)
    for name in LEVELS:
        getattr(log, name)("x")
    assert [e["level"] for e in jsonLines(stream)] == list(LEVELS)


def test_textLinesNameTheLoggerAndLevel() -> None:
    """
    Text lines show the same logger name as JSON: the service for a service's lines, the module for netd's own, and events below the level are not written.
    """
    publisher, stream = publisherTo("text", "info")
    log = ServiceLogger("echo-a")
    log.observer = publisher
    log.debug("not shown")
    log.warn("closing connection from {peer}", peer="127.0.0.1")
    Logger(namespace="netd.daemon.daemon", observer=publisher).info("netd is ready")
    legacy = legacyLog.LogPublisher(observerPublisher=publisher, publishPublisher=publisher)
    legacy.msg("from the legacy API", system="EchoProtocol,3,127.0.0.1")
    service, daemon, old = stream.getvalue().splitlines()
    assert "[echo-a#warn] closing connection from 127.0.0.1" in service
    assert "[netd.daemon.daemon#info] netd is ready" in daemon
    assert "[twisted.python.log#info] [EchoProtocol,3,127.0.0.1] from the legacy API" in old


def test_textFailureHasItsTraceback() -> None:
    """
    A failure's text line is followed by its traceback.
    """
    publisher, stream = publisherTo("text", "info")
    try:
        int("x")
    except ValueError:
        Logger(namespace="netd.daemon.cli", observer=publisher).failure("the reload failed")
    text = stream.getvalue()
    assert "[netd.daemon.cli#critical] the reload failed\n" in text
    assert "ValueError: invalid literal" in text


def _modules(package: ModuleType) -> list[str]:
    """
    The names of a package's modules, the package included (not C{__main__}).
    """
    name = package.__name__
    found = [name]
    for module in pkgutil.walk_packages(package.__path__, prefix=name + "."):
        if not module.name.endswith("__main__"):
            found.append(module.name)
    return found


def test_everyLoggerIsNamedAfterItsModule() -> None:
    """
    Every Logger that netd's and the plugins' modules declare (at module level or on a class) is named after its module, never after a class (Twisted's default).
    """
    declared = []
    for name in _modules(netd) + _modules(netd_plugins):
        module = importlib.import_module(name)
        classes = [value for value in vars(module).values() if isinstance(value, type) and value.__module__ == name]
        # A class's logger as its instances see it: Twisted's descriptor may rename it.
        found = list(vars(module).values()) + [getattr(cls, key) for cls in classes for key in vars(cls)]
        declared += [(name, value.namespace) for value in found if isinstance(value, Logger)]
    assert declared
    assert [(module, namespace) for module, namespace in declared if namespace != module] == []
    # Loggers made inside functions: the namespace written in the source.
    for root in (Path(netd.__file__).parent, Path(netd_plugins.__file__).parent):
        for source in root.rglob("*.py"):
            if "tests" in source.relative_to(root).parts:  # a plugin's own tests are not its code
                continue
            for call in re.findall(r"\bLogger\(([^)]*)\)", source.read_text()):
                assert call.startswith('namespace="netd.'), (source, call)


def test_docsListTheJSONFields() -> None:
    """
    The docs' table of JSON line fields (docs/service.md, or any page of docs/ or the README) names every field a JSON line can have besides the event's own.
    """
    root = Path(__file__).parents[2]
    documented: set[str] = set()
    for page in [root / "README.md", *sorted((root / "docs").rglob("*.md"))]:
        if not page.exists():
            continue
        for table in re.findall(
            r"^\| field \| value \|\n\| --- \| --- \|\n((?:\|.*\n)+)", page.read_text(), re.MULTILINE
        ):
            documented |= set(re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE))
    assert RESERVED | {"service"} <= documented, sorted(RESERVED | {"service"} - documented)


def test_portChatterDropped() -> None:
    """
    Twisted's legacy "starting on" and "Port Closed" lines are dropped; other legacy lines are kept.
    """
    publisher, stream = publisherTo("text", "info")
    events: list[dict[str, object]] = []
    legacy = LogPublisher(publisher, events.append)
    for text in (
        "_UDPSocket starting on 40000",
        "(UDP Port 40000 Closed)",
        "(TCP Port 7 Closed)",
        "something else happened",
    ):
        legacy(
            {
                "log_namespace": "log_legacy",
                "log_text": text,
                "log_format": "{log_text}",
                "log_level": LogLevel.info,
                "log_time": 0.0,
                "log_system": "-",
            }
        )
    assert stream.getvalue().count("\n") == 1
    assert "something else happened" in stream.getvalue()
    assert len(events) == 4


def test_mainLoopTerminatedDropped() -> None:
    """
    Twisted's "Main loop terminated." is dropped, so that netd's "netd stopped" stays the last line; Twisted's other lines are kept.
    """
    publisher, stream = publisherTo("text", "info")
    log = Logger(namespace="twisted.internet.base", observer=publisher)
    log.info("Received SIGTERM, shutting down.")
    log.info("Main loop terminated.")
    [line] = stream.getvalue().splitlines()
    assert line.endswith("[twisted.internet.base#info] Received SIGTERM, shutting down.")


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
