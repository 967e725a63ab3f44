"""
The worked example of "Testing your client with netd" (docs/testing.md), kept here
so that it cannot rot: a small line-protocol client under test, checked with
the C{netd_server} fixture against faults set through the control API
(C{reset_after} and C{slice}, see "Faults on purpose").
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from netd.testing.harness import NetdServer

pytestmark = pytest.mark.integration

# --- the example of docs/testing.md starts here ---

ECHO = {
    "services": [
        {"name": "echo", "plugin": "echo", "listen": ["tcp:0:interface=127.0.0.1"], "framing": "line"},
    ]
}


def ask(address: tuple[str, int], question: bytes, attempts: int = 3) -> bytes:
    """
    The client under test: send one line, read the answer line, and try again
    on a new connection when the server resets or closes it.
    """
    for _ in range(attempts):
        try:
            with socket.create_connection(address, timeout=5) as connection:
                connection.sendall(question + b"\n")
                answer = b""
                while not answer.endswith(b"\n"):
                    chunk = connection.recv(4096)
                    if not chunk:
                        raise ConnectionResetError("closed before the answer")
                    answer += chunk
                return answer[:-1]
        except ConnectionError:  # reset, broken pipe, closed early
            continue
    raise ConnectionError(f"no answer in {attempts} attempts")


def test_retriesAfterResets(netd_server: Callable[..., NetdServer]) -> None:
    """
    The client gets its answer although the first two connections are reset.
    """
    server = netd_server(ECHO)
    server.admin.setFaults("echo", [{"type": "reset_after", "bytes": 0, "first": 2}])
    assert ask(server.address("echo"), b"hello") == b"hello"
    assert server.admin.service("echo")["counters"]["connections_accepted"] == 3


def test_reassemblesSlicedAnswers(netd_server: Callable[..., NetdServer]) -> None:
    """
    The client puts together an answer that arrives one byte at a time.
    """
    server = netd_server(ECHO)
    server.admin.setFaults("echo", [{"type": "slice", "size": 1, "delay": 5, "direction": "to_client"}])
    with socket.create_connection(server.address("echo"), timeout=5) as naive:
        naive.sendall(b"hello world\n")
        assert len(naive.recv(4096)) < len(b"hello world\n")  # one recv is not one message
    assert ask(server.address("echo"), b"hello world") == b"hello world"


# --- the example of docs/testing.md ends here ---


def test_exampleFailsWithoutItsFaults(netd_server: Callable[..., NetdServer]) -> None:
    """
    Without the faults the client needs one connection, so the example's counts really come from the reset fault.
    """
    server = netd_server(ECHO)
    assert ask(server.address("echo"), b"hello") == b"hello"
    assert server.admin.service("echo")["counters"]["connections_accepted"] == 1
    assert server.admin.faults("echo") == []
