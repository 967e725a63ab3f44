"""
What the control API needs from the daemon it serves, declared here so that
the API and L{netd.daemon.daemon} never import each other: the application
(L{netd.daemon.application}) hands the one to the other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from typing import Protocol

from netd.daemon.service import NetService


class ServedDaemon(Protocol):
    """
    The daemon as the control API sees it: its services, whether it serves,
    and its reload.
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
