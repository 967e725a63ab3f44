"""
netd's reactor (L{netd.reactor}) as real processes: C{netd run} runs on it
unless C{NETD_REACTOR} says otherwise, and C{twistd --reactor=netd} runs
netd under twistd on it.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from .conftest import NetdProcess, connect, echoService, recvExactly, recvUntilClosed
from .test_twistd import stoppedBySigterm, twistd  # noqa: F401

pytestmark = pytest.mark.integration


def echoBothWays(address: tuple[str, int], size: int) -> None:
    """
    Send C{size} bytes while reading their echo, then half-close and expect EOF after the last byte.
    """
    payload = os.urandom(size)
    with connect(address) as client:
        sender = threading.Thread(target=lambda: (client.sendall(payload), client.shutdown(socket.SHUT_WR)))
        sender.start()
        try:
            assert recvUntilClosed(client, timeout=30, limit=size) == payload
        finally:
            sender.join(timeout=30)


def test_netdRunsOnItsReactor(startNetd: Any) -> None:
    """
    netd run says it runs on netd's reactor, and echoes 8 MiB sent while it echoes, raw and u32, then closes after a half-close.
    """
    config = echoService("raw", ["tcp:0:interface=127.0.0.1"]) + echoService("u32", ["tcp:0:interface=127.0.0.1"], framing="u32")
    netd = startNetd(config)
    assert "(reactor: netd)" in netd.log()
    echoBothWays(netd.address("raw"), 8 * 2**20)
    with connect(netd.address("u32")) as client:
        frames = [os.urandom(n) for n in (0, 1, 64, 60000)]
        wire = b"".join(len(f).to_bytes(4, "big") + f for f in frames)
        client.sendall(wire)
        assert recvExactly(client, len(wire)) == wire


def test_twistdOnNetdReactor(twistd: Callable[..., NetdProcess]) -> None:  # noqa: F811
    """
    twistd --reactor=netd -n netd -c FILE runs netd's reactor and serves echo, then stops on SIGTERM.
    """
    netd = twistd(echoService("echo", ["tcp:0:interface=127.0.0.1"]), "--reactor=netd", "-n", "--pidfile=")
    netd.waitUntilReady()
    assert "reactor class: netd.reactor.NetdReactor" in netd.log()
    with connect(netd.address("echo")) as client:
        client.sendall(b"on netd's reactor\n")
        assert recvExactly(client, 18) == b"on netd's reactor\n"
    stoppedBySigterm(netd)
