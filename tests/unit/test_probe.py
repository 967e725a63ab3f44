"""
C{netd health} (L{netd.daemon.probe}): where it finds the control API from a
config's C{[daemon] admin}, what it asks, and its exit status.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from netd.daemon.cli import main
from netd.daemon.probe import ProbeError, ProbeTarget, probe


@pytest.mark.parametrize(
    ("listen", "target"),
    [
        ("tcp:8053:interface=127.0.0.1", ProbeTarget("127.0.0.1", 8053)),
        ("tcp:8053", ProbeTarget("127.0.0.1", 8053)),
        ("tcp:port=8053:interface=0.0.0.0", ProbeTarget("127.0.0.1", 8053)),
        ("tcp:8053:interface=10.1.2.3:backlog=10", ProbeTarget("10.1.2.3", 8053)),
        ("tcp6:8053", ProbeTarget("::1", 8053)),
        ("tcp6:8053:interface=\\:\\:1", ProbeTarget("::1", 8053)),
        ("unix:/run/netd/admin.sock", ProbeTarget(path="/run/netd/admin.sock")),
        ("unix:address=/run/netd/admin.sock:mode=600", ProbeTarget(path="/run/netd/admin.sock")),
    ],
)
def test_targetOfListen(listen: str, target: ProbeTarget) -> None:
    """
    A tcp:, tcp6: or unix: control API is reached at its address, a wildcard one at its loopback address.
    """
    assert ProbeTarget.fromListen(listen) == target


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("tcp:0:interface=127.0.0.1", "a port picked at start; give it a fixed port"),
        ("systemd:domain=INET:index=0", "netd health asks a tcp:, tcp6: or unix: one"),
    ],
)
def test_targetUnknowable(listen: str, expected: str) -> None:
    """
    A control API on port 0 or on a socket systemd passes cannot be probed, and the error says why.
    """
    with pytest.raises(ProbeError, match=expected):
        ProbeTarget.fromListen(listen)


class OneAnswer:
    """
    A unix socket server that answers one HTTP request with a canned response
    and keeps what was asked.
    """

    def __init__(self, path: Path, response: bytes) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.server.settimeout(10)
        self.response = response
        self.request = b""
        self.thread = threading.Thread(target=self.answer)
        self.thread.start()

    def answer(self) -> None:
        """
        Read the request's head and send the response.
        """
        connection, _ = self.server.accept()
        with connection:
            connection.settimeout(10)
            while b"\r\n\r\n" not in self.request:
                chunk = connection.recv(4096)
                if not chunk:
                    break
                self.request += chunk
            connection.sendall(self.response)

    def close(self) -> None:
        """
        Wait for the answer and close the server.
        """
        self.thread.join(10)
        self.server.close()


@pytest.fixture
def adminSocket(tmp_path: Path) -> Path:
    """
    A short socket path (unix socket paths are limited to 107 bytes).
    """
    return tmp_path / "a.sock"


@pytest.fixture
def healthy(adminSocket: Path) -> Iterator[OneAnswer]:
    """
    A control API stand-in answering 200 with netd's /health body.
    """
    body = b'{\n  "status": "ok"\n}\n'
    server = OneAnswer(adminSocket, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    yield server
    server.close()


def test_probeOverUnixSocket(adminSocket: Path, healthy: OneAnswer) -> None:
    """
    The probe GETs the path over the unix socket with Host localhost and returns the status and the body on one line.
    """
    assert probe(ProbeTarget(path=str(adminSocket)), "/health", 10) == (200, '{ "status": "ok" }')
    healthy.close()
    assert healthy.request.startswith(b"GET /health HTTP/1.1\r\n")
    assert b"\r\nHost: localhost\r\n" in healthy.request


def writeConfig(tmp_path: Path, admin: str) -> Path:
    """
    A config with one echo service and the control API at C{admin}.
    """
    config = tmp_path / "netd.toml"
    config.write_text(
        f'[daemon]\nadmin = {admin}\n\n[[services]]\nname = "echo"\nplugin = "echo"\nlisten = ["tcp:0"]\n'
    )
    return config


def test_healthCommandReady(
    tmp_path: Path, adminSocket: Path, healthy: OneAnswer, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    netd health --ready asks /ready at the config's control API and exits 0 on a 200.
    """
    config = writeConfig(tmp_path, f'"unix:{adminSocket}"')
    assert main(["health", "--ready", "-c", str(config)]) == 0
    healthy.close()
    assert healthy.request.startswith(b"GET /ready ")
    assert capsys.readouterr().out == f'{adminSocket}/ready: 200 {{ "status": "ok" }}\n'


def test_healthCommandNotReady(tmp_path: Path, adminSocket: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """
    netd health exits 1 on an answer other than 200, printing it.
    """
    server = OneAnswer(adminSocket, b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 8\r\n\r\nstarting")
    try:
        assert main(["health", "-c", str(writeConfig(tmp_path, f'"unix:{adminSocket}"'))]) == 1
    finally:
        server.close()
    assert capsys.readouterr().out == f"{adminSocket}/health: 503 starting\n"


def test_healthCommandAdminOption(adminSocket: Path, healthy: OneAnswer, capsys: pytest.CaptureFixture[str]) -> None:
    """
    netd health --admin asks the control API at that address, as netd run --admin was given it, reading no config.
    """
    assert main(["health", "--admin", f"unix:{adminSocket}", "-c", "/nonexistent/netd.toml"]) == 0
    assert capsys.readouterr().out.startswith(f"{adminSocket}/health: 200 ")


@pytest.mark.parametrize(
    ("admin", "expected"),
    [
        ("false", "'false' is not a valid endpoint string"),
        ("udp:8053", "the control API is HTTP, which needs a stream address"),
    ],
)
def test_healthAdminOptionRefused(admin: str, expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    """
    netd health --admin with something not an address, or a datagram one, exits 1 and says why.
    """
    assert main(["health", "--admin", admin]) == 1
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize(
    ("admin", "expected"),
    [
        ("false", "'s [daemon] admin is false: there is no control API to ask"),
        ('"tcp:0:interface=127.0.0.1"', "a port picked at start"),
        ('"unix:{socket}"', "{socket}: No such file or directory"),
    ],
)
def test_healthCommandFails(
    tmp_path: Path, adminSocket: Path, admin: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    netd health exits 1 with the reason when there is no control API to ask or nothing answers.
    """
    config = writeConfig(tmp_path, admin.format(socket=adminSocket))
    assert main(["health", "-c", str(config)]) == 1
    assert expected.format(socket=adminSocket) in capsys.readouterr().err
