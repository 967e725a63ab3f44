"""
Logging: where events go (text or JSON lines on stderr), the logger names, and
service-tagged loggers.

Every line names its logger, one scheme for both formats: C{netd.MODULE} for
netd's own lines (C{netd.daemon.cli}, C{netd.daemon.daemon}, C{netd.daemon.api.server}...), the service's
name for a service's lines (C{echo}), Twisted's module for Twisted's own
(C{twisted.internet.base}), and C{twisted.python.log} for events sent through
Twisted's legacy API.
"""

from __future__ import annotations

import json
import math
import re
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    formatEventAsClassicLogText,
    globalLogBeginner,
)
from twisted.python.failure import Failure
from twisted.python.reflect import safe_str
from zope.interface import implementer

LEVELS = tuple(level.name for level in LogLevel.iterconstants())
"""
The values of a JSON line's C{level} (and of C{[daemon] log_level}), least
severe first: Twisted's names, C{debug}, C{info}, C{warn}, C{error}, C{critical}.
"""

LEGACY_LOGGER = "twisted.python.log"
"""
The logger name of events sent through Twisted's legacy API
(C{twisted.python.log.msg}/C{err}), whose namespace is C{log_legacy}.
"""

_LEGACY_KEYS = frozenset({"message", "isError", "failure", "why", "time", "system", "format", "printed"})
"""
The keys a legacy event carries beside its own fields: Twisted's, not the event's.
"""

RESERVED = frozenset({"time", "level", "logger", "system", "msg", "traceback"})
"""
The fields netd writes on a JSON line besides C{service}; an event's own field
of one of these names is written as C{field_NAME}, so that neither hides the other.
"""


class NamedLogger(Logger):
    """
    A logger that keeps its namespace as a class attribute: Twisted's
    L{Logger.__get__} renames a class's logger after the class
    (C{netd.daemon.daemon.Daemon}), which would break the naming scheme.
    """

    def __get__(self, instance: object, owner: type | None = None) -> NamedLogger:
        """
        This logger, with the instance (or the class) as the events' source.
        """
        return self.__class__(self.namespace, owner if instance is None else instance, self.observer)


class ServiceLogger(Logger):
    """
    A logger whose every event carries the service it concerns.

    Its namespace, the logger name of its lines, is the service's name (C{[echo#info]}
    in text), and the name is also a C{service} field (JSON's C{service}), so one
    can grep or filter for either.
    """

    def __init__(self, serviceName: str) -> None:
        super().__init__(namespace=serviceName)
        self.serviceName = serviceName

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        """
        Add the service to the event and emit it.
        """
        kwargs.setdefault("service", self.serviceName)
        super().emit(level, format, **kwargs)


def loggerName(event: LogEvent) -> str:
    """
    The name of the logger that emitted C{event}: its namespace, but
    L{LEGACY_LOGGER} for Twisted's legacy events.
    """
    namespace = str(event.get("log_namespace") or "-")
    return LEGACY_LOGGER if namespace == "log_legacy" else namespace


def _legacySystem(event: LogEvent) -> str | None:
    """
    The C{system} of a legacy event (which connection it concerns, say), if it
    names one.
    """
    if event.get("log_namespace") != "log_legacy":
        return None
    system = event.get("log_system")
    return None if system in (None, "-") else str(system)


def _levelName(event: LogEvent) -> str:
    """
    The event's level as one of L{LEVELS}.
    """
    name = str(getattr(event.get("log_level"), "name", "info"))
    return name if name in LEVELS else "info"


def formatEventAsText(event: LogEvent) -> str | None:
    """
    One text line (a failure's traceback on the lines after it), as Twisted's
    classic format, C{TIME [LOGGER#LEVEL] MESSAGE}, with the logger named as
    in JSON (a legacy event's system in brackets after it).
    """
    system = f"{loggerName(event)}#{_levelName(event)}"
    legacy = _legacySystem(event)
    if legacy is not None:
        system = f"{system}] [{legacy}"
    return formatEventAsClassicLogText({**event, "log_system": system})


def _time(event: LogEvent) -> str:
    """
    The event's time in RFC 3339, UTC, with microseconds.
    """
    return datetime.fromtimestamp(float(event.get("log_time", 0.0)), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def eventAsRecord(event: LogEvent) -> dict[str, Any]:
    """
    The flat JSON object of one event: C{time} (RFC 3339, UTC), C{level},
    C{logger}, C{service} where the event has one, C{msg} (the rendered
    message), the event's own fields as plain JSON values, and C{traceback}
    for a failure.  Nothing of Twisted's own bookkeeping (no C{log_*} key).
    """
    legacy = event.get("log_namespace") == "log_legacy"
    record: dict[str, Any] = {
        "time": _time(event),
        "level": _levelName(event),
        "logger": loggerName(event),
    }
    if "service" in event:
        record["service"] = _plain(event["service"])
    failure = event.get("log_failure")
    if legacy:
        system = _legacySystem(event)
        if system is not None:
            record["system"] = system
        legacyFailure = event.get("failure")
        if isinstance(legacyFailure, Failure) and event.get("isError"):
            failure = legacyFailure
            record["msg"] = str(event.get("why") or "Unhandled Error")
    if "msg" not in record:
        record["msg"] = formatEvent(event)
    for key, value in event.items():
        if key.startswith("log_") or key == "service" or (legacy and key in _LEGACY_KEYS):
            continue
        record[f"field_{key}" if key in RESERVED else key] = _plain(value)
    if isinstance(failure, Failure):
        record["traceback"] = failure.getTraceback()
    return record


def _plain(value: object) -> object:
    """
    C{value} as a plain JSON value: strings, finite numbers, booleans, null,
    lists and objects as they are; bytes decoded (undecodable bytes as
    C{\\xNN}); anything else as its C{str}, as the message shows it.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return safe_str(value)


def formatEventAsJSON(event: LogEvent) -> str:
    """
    One line of JSON: L{eventAsRecord}, in ASCII (other characters as
    C{\\uXXXX}), so that a stderr of any encoding carries it intact.

    Fields that cannot be written (a list that contains itself) are left out
    and the reason given as C{fields_error}: an exception here would make
    Twisted drop the observer, and netd would log nothing more.
    """
    try:
        return json.dumps(eventAsRecord(event), allow_nan=False) + "\n"
    except (ValueError, TypeError, RecursionError) as e:
        record = {key: _plain(event.get(key)) for key in ("service",) if key in event}
        bare = {"time": _time(event), "level": _levelName(event), "logger": loggerName(event), **record}
        return json.dumps({**bare, "msg": formatEvent(event), "fields_error": safe_str(e)}) + "\n"


_PORT_CHATTER = re.compile(r"^(\(\w+ Port \S+ Closed\)|.+ starting on \S+)$")


@implementer(ILogFilterPredicate)
class ChatterFilter:
    """
    Drops Twisted's lines that netd says better itself: the legacy "... starting
    on N" and "(UDP Port N Closed)" (netd logs each listening address with its
    service, and sockets it opens as a client, the DNS proxy's upstream
    sockets, would flood the log), and "Main loop terminated.", which would
    follow netd's own last line ("netd stopped: ...").
    """

    def __call__(self, event: LogEvent) -> PredicateResult:
        """
        Say no to chatter, maybe to everything else.
        """
        namespace = event.get("log_namespace")
        chatter = (namespace == "log_legacy" and _PORT_CHATTER.match(str(event.get("log_text", ""))) is not None) or (
            namespace == "twisted.internet.base" and event.get("log_format") == "Main loop terminated."
        )
        result: PredicateResult = PredicateResult.no if chatter else PredicateResult.maybe
        return result


def makeObserver(logFormat: str, level: str, stream: IO[str]) -> ILogObserver:
    """
    An observer writing events of C{level} and above to C{stream}, as text or JSON lines.
    """
    observer = FileLogObserver(stream, formatEventAsJSON if logFormat == "json" else formatEventAsText)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    _noteLevel(level)
    _levelPredicates.append(predicate)
    return FilteringLogObserver(observer, [ChatterFilter(), predicate])


debugEnabled = False
"""
Whether debug events are written (the configured level is debug): the hot
paths check this cheap flag before building a per-connection event, since
Twisted's level filter only runs once an event has been built.
"""


def _noteLevel(level: str) -> None:
    """
    Set L{debugEnabled} from the configured level.
    """
    global debugEnabled
    debugEnabled = LogLevel.levelWithName(level) <= LogLevel.debug


_levelPredicates: list[LogLevelFilterPredicate] = []
"""
The level filters of the observers L{makeObserver} made, for L{setLogLevel}.
"""


def setLogLevel(level: str) -> None:
    """
    Change the least severe level written by every observer L{makeObserver}
    made (a reload of C{[daemon] log_level}).
    """
    _noteLevel(level)
    for predicate in _levelPredicates:
        predicate.defaultLogLevel = LogLevel.levelWithName(level)


def startLogging(logFormat: str, level: str, stream: IO[str] = sys.stderr) -> None:
    """
    Send the process's log events to C{stream}; call once, at start.
    """
    globalLogBeginner.beginLoggingTo([makeObserver(logFormat, level, stream)], redirectStandardIO=False)
