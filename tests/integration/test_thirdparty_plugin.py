"""
A third-party plugin end to end: the example C{reverse} plugin of
tests/thirdparty/, installed as its own distribution, is found through the
C{netd.plugins} entry point and served by netd like a built-in.
"""

from __future__ import annotations

import socket
import subprocess
from typing import Any

import pytest

from netd.testing.harness import netdCommand

from .conftest import connect, recvExactly, recvUntilClosed, socat

pytestmark = pytest.mark.integration

REVERSE = """\
[[services]]
name = "rev"
plugin = "reverse"
listen = ["tcp:0:interface=127.0.0.1"]
framing = "line"
prefix = "> "
repeat = 2
"""


def netd(*args: str) -> subprocess.CompletedProcess[str]:
    """
    Run a netd subcommand to completion and capture what it prints.
    """
    return subprocess.run(
        netdCommand(*args),
        capture_output=True,
        text=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
    )


def test_reverseServedOverPythonSocket(startNetd: Any) -> None:
    """
    The reverse plugin, configured with its own prefix and repeat keys, answers each line reversed, prefixed and repeated.
    """
    daemon = startNetd(REVERSE)
    with connect(daemon.address("rev", "tcp")) as client:
        client.sendall(b"abc\n")
        assert recvExactly(client, 12) == b"> cba\n> cba\n"
        client.sendall(b"hello\r\nxy\n")
        expected = b"> olleh\n> olleh\n> yx\n> yx\n"
        assert recvExactly(client, len(expected)) == expected
        client.shutdown(socket.SHUT_WR)
        assert recvUntilClosed(client) == b""
    assert "[rev#info] listening on tcp 127.0.0.1:" in daemon.log()


def test_reverseServedOverSocat(startNetd: Any) -> None:
    """
    socat sending a line to the reverse plugin gets it back reversed, prefixed and repeated.
    """
    daemon = startNetd(REVERSE)
    host, port = daemon.address("rev", "tcp")
    assert socat(["-", f"TCP:{host}:{port}"], b"abc\n") == b"> cba\n> cba\n"


def test_pluginsListsEntryPoint() -> None:
    """
    netd plugins lists the reverse plugin with its entry-point source, its framings and its own options.
    """
    done = netd("plugins")
    assert done.returncode == 0, done.stderr
    section = done.stdout.split("reverse: ", 1)[1].split("\n\n", 1)[0]
    assert "source: entry point 'reverse' = netd_reverse:plugin (from netd-reverse)" in section
    assert "transports: stream" in section
    assert "framings: line, netstring, u16, u32 (default line)" in section
    assert 'prefix = ""' in section
    assert "repeat = 1" in section
    assert "could not load" not in done.stderr


def test_reverseRefusesUDP(startNetd: Any) -> None:
    """
    A udp listen address for the stream-only reverse plugin is refused at start with exit 1, naming the key path.
    """
    daemon = startNetd(REVERSE.replace('"tcp:0:interface=127.0.0.1"', '"udp:0:interface=127.0.0.1"'), wait=False)
    assert daemon.process.wait(timeout=20) == 1
    log = daemon.log()
    assert "services[0].listen[0]" in log and "does not serve datagrams" in log, log
    assert not daemon.portsFile.exists()
