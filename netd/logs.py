"""
Logging: where events go (text or JSON lines on stderr), and service-tagged loggers.
"""

from __future__ import annotations

import re
import sys
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    PredicateResult,
    globalLogBeginner,
    jsonFileLogObserver,
    textFileLogObserver,
)
from zope.interface import implementer


class ServiceLogger(Logger):
    """
    A logger whose every event carries the service it concerns.

    The name is a C{service} field (kept in JSON output) and the C{log_system}
    shown at the start of each text line, so one can grep either for it.
    """

    def __init__(self, namespace: str, serviceName: str) -> None:
        super().__init__(namespace=namespace)
        self.serviceName = serviceName

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        """
        Add the service to the event and emit it.
        """
        kwargs.setdefault("service", self.serviceName)
        kwargs.setdefault("log_system", f"{self.serviceName}#{level.name}")
        super().emit(level, format, **kwargs)


_PORT_CHATTER = re.compile(r"^(\(\w+ Port \S+ Closed\)|.+ starting on \S+)$")


@implementer(ILogFilterPredicate)
class PortChatterFilter:
    """
    Drops Twisted's legacy "... starting on N" and "(UDP Port N Closed)" lines:
    netd logs each listening address itself, with its service, and sockets it
    opens as a client (the DNS proxy's upstream sockets) would flood the log.
    """

    def __call__(self, event: LogEvent) -> PredicateResult:
        """
        Say no to port chatter, maybe to everything else.
        """
        if event.get("log_namespace") == "log_legacy" and _PORT_CHATTER.match(str(event.get("log_text", ""))):
            return PredicateResult.no
        return PredicateResult.maybe


def makeObserver(logFormat: str, level: str, stream: IO[str]) -> ILogObserver:
    """
    An observer writing events of C{level} and above to C{stream}, as text or JSON lines.
    """
    if logFormat == "json":
        observer = jsonFileLogObserver(stream, recordSeparator="")
    else:
        observer = textFileLogObserver(stream)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    _noteLevel(level)
    _levelPredicates.append(predicate)
    return FilteringLogObserver(observer, [PortChatterFilter(), predicate])


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
