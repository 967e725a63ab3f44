"""
netd's reactors as real processes: C{netd run} runs on its uvloop one
(L{netd.reactors.uv}) unless C{NETD_REACTOR} names another, and C{twistd
--reactor=netd-uvloop} or C{--reactor=netd} runs netd under twistd on one.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from netd.testing.harness import NetdServer

from .conftest import connect, echoService, recvExactly, recvUntilClosed
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


@pytest.mark.parametrize(("chosen", "named"), [(None, "uvloop"), ("uvloop", "uvloop"), ("netd", "netd")])
def test_netdRunsOnItsReactor(startNetd: Any, monkeypatch: pytest.MonkeyPatch, chosen: str | None, named: str) -> None:
    """
    netd run says which of its reactors it runs on (uvloop unless NETD_REACTOR names another), and echoes 8 MiB sent while it echoes, raw and u32, then closes after a half-close.
    """
    if chosen is None:
        monkeypatch.delenv("NETD_REACTOR", raising=False)
    else:
        monkeypatch.setenv("NETD_REACTOR", chosen)
    config = echoService("raw", ["tcp:0:interface=127.0.0.1"]) + echoService(
        "u32", ["tcp:0:interface=127.0.0.1"], framing="u32"
    )
    netd = startNetd(config)
    assert f"(reactor: {named})" in netd.log()
    echoBothWays(netd.address("raw"), 8 * 2**20)
    with connect(netd.address("u32")) as client:
        frames = [os.urandom(n) for n in (0, 1, 64, 60000)]
        wire = b"".join(len(f).to_bytes(4, "big") + f for f in frames)
        client.sendall(wire)
        assert recvExactly(client, len(wire)) == wire


@pytest.mark.parametrize(
    ("name", "reactorClass"),
    [("netd-uvloop", "netd.reactors.uv.UvloopReactor"), ("netd", "netd.reactors.epoll.NetdReactor")],
)
def test_twistdOnNetdReactor(twistd: Callable[..., NetdServer], name: str, reactorClass: str) -> None:
    """
    twistd --reactor=netd-uvloop (or netd) -n netd -c FILE runs that reactor of netd's and serves echo, then stops on SIGTERM.
    """
    netd = twistd(echoService("echo", ["tcp:0:interface=127.0.0.1"]), f"--reactor={name}", "-n", "--pidfile=")
    netd.waitUntilReady()
    assert f"reactor class: {reactorClass}" in netd.log()
    with connect(netd.address("echo")) as client:
        client.sendall(b"on netd's reactor\n")
        assert recvExactly(client, 18) == b"on netd's reactor\n"
    stoppedBySigterm(netd)
