"""
What the control API needs from the daemon it serves, declared here so that
the API and L{netd.daemon.daemon} never import each other: the application
(L{netd.daemon.application}) hands the one to the other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine, Mapping, Sequence
from typing import Any, Protocol

from netd.daemon.service import NetService


class ServedDaemon(Protocol):
    """
    The daemon as the control API sees it: its services, whether it serves,
    its reload, and its runtime changes of one service.
    """

    @property
    def stopping(self) -> bool:
        """
        Whether a stop has begun (C{/ready} then answers 503).
        """

    def ready(self) -> bool:
        """
        Whether every service listens and no stop has begun.
        """

    def netServices(self) -> Sequence[NetService]:
        """
        The services, in config order.
        """

    def reload(self) -> Awaitable[Mapping[str, Sequence[str]]]:
        """
        Read the config file again and apply it; what C{POST /reload} calls.
        """

    def createService(self, table: object) -> Coroutine[Any, Any, Mapping[str, Sequence[Mapping[str, object]]]]:
        """
        Create and start one service from a C{[[services]]} table; what
        C{POST /services} calls.  Returns its name to its addresses.
        """

    def deleteService(self, name: str) -> Coroutine[Any, Any, Mapping[str, Sequence[Mapping[str, object]]]]:
        """
        Stop one service; what C{DELETE /services/NAME} calls.  Returns its
        name to the addresses it listened on.
        """
