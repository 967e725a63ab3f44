"""
Services created and removed while a real netd runs: C{POST /services} with
curl and through the harness, a real socket to the new echo service, a reload
that keeps it, and C{DELETE /services/NAME} after which its port is closed.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from netd.testing.harness import AdminError, NetdServer

from .conftest import IO_TIMEOUT, connect, echoService, recvExactly, requireTool

pytestmark = pytest.mark.integration

CONFIG = '[daemon]\nadmin = "tcp:0:interface=127.0.0.1"\n\n' + echoService("echo", ["tcp:0:interface=127.0.0.1"])
EXTRA = {"name": "extra", "plugin": "echo", "listen": ["tcp:0:interface=127.0.0.1"], "idle_timeout": 0}


def curl(netd: NetdServer, method: str, path: str, body: object) -> tuple[int, dict[str, object]]:
    """
    One request to netd's control API with curl (its token, a JSON body): the status and the JSON answer.
    """
    requireTool("curl")
    token = netd.admin.token
    assert token is not None
    done = subprocess.run(
        [
            "curl",
            "--silent",
            "--max-time",
            str(IO_TIMEOUT),
            "--request",
            method,
            "--header",
            f"Authorization: Bearer {token}",
            "--header",
            "Content-Type: application/json",
            "--data",
            json.dumps(body),
            "--write-out",
            "\n%{http_code}",
            netd.adminURL(path),
        ],
        capture_output=True,
        text=True,
        timeout=IO_TIMEOUT * 2,
        check=True,
    )
    answer, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(answer)


def echoes(address: tuple[str, int]) -> bytes:
    """
    Send a line to an echo service over a real TCP connection; what comes back.
    """
    with connect(address) as client:
        client.sendall(b"hello netd\n")
        return recvExactly(client, len(b"hello netd\n"))


def refused(address: tuple[str, int]) -> bool:
    """
    Whether a TCP connection to C{address} is refused (nothing listens).
    """
    try:
        socket.create_connection(address, timeout=IO_TIMEOUT).close()
    except ConnectionRefusedError:
        return True
    return False


def test_curlCreatesAnEchoServiceAndRefusesABadTable(startNetd: Callable[..., NetdServer]) -> None:
    """
    curl POSTs a service table: 201, and the new echo service answers a real socket; a table with a bad key answers 422 naming it, and a second table of the same name 409.
    """
    netd = startNetd(CONFIG)
    status, answer = curl(netd, "POST", "/services", EXTRA)
    assert status == 201, answer
    addresses = answer["addresses"]
    assert isinstance(addresses, list)
    assert echoes(("127.0.0.1", addresses[0]["port"])) == b"hello netd\n"
    status, answer = curl(netd, "POST", "/services", {**EXTRA, "name": "bad", "max_connections": -1})
    assert status == 422
    problems = answer["problems"]
    assert isinstance(problems, list) and problems[0].startswith("max_connections: ")
    status, answer = curl(netd, "POST", "/services", EXTRA)
    assert status == 409
    assert "runtime: service extra (echo) added on tcp 127.0.0.1:" in netd.log()


def test_harnessAddsKeepsAcrossReloadAndRemoves(startNetd: Callable[..., NetdServer], tmp_path: Path) -> None:
    """
    The harness's addService starts a service that the ports file and address() know at once; a reload keeps it; removeService closes its port (a new connection is refused) and it leaves the ports file.
    """
    netd = startNetd(CONFIG)
    netd.addService(EXTRA)
    address = netd.address("extra")
    assert echoes(address) == b"hello netd\n"
    assert set(json.loads(netd.portsFile.read_text())["services"]) == {"echo", "extra"}
    assert netd.admin.reload()["unchanged"] == ["echo", "extra"]
    assert echoes(address) == b"hello netd\n"
    removed = netd.removeService("extra")
    assert removed["addresses"][0]["port"] == address[1]
    assert refused(address)
    assert set(netd.services) == {"echo"}
    with pytest.raises(AdminError) as caught:
        netd.removeService("extra")
    assert caught.value.status == 404
    assert echoes(netd.address("echo")) == b"hello netd\n"
