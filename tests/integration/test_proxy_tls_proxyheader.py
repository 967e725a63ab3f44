"""
A PROXY header towards a TLS upstream, end to end over real sockets: a plain
client, netd's proxy with C{upstream_tls} and C{upstream_proxy_protocol},
and two real servers that read the header and then TLS: netd itself (an
echo service on a C{haproxy:} listener with a C{tls} table), and HAProxy
(C{bind ... accept-proxy ssl crt ...} in TCP mode, passing the client on
with C{send-proxy-v2} to a netd echo on a C{haproxy:} listener).  Each
server's view of the client is the client's own address and port, which
only the header can have told it.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from netd.testing.harness import NetdServer
from netd.tls.devcerts import DevelopmentSet, ensureDevelopmentSet

from .conftest import IO_TIMEOUT, connect, recvExactly, requireTool
from .processes import stopProcess

pytestmark = pytest.mark.integration

PROXIED = "haproxy:tcp:0:interface=127.0.0.1"


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevelopmentSet:
    """
    A development set: CA, localhost server, client.
    """
    files, _ = ensureDevelopmentSet(str(tmp_path_factory.mktemp("certs")))
    return files


@pytest.fixture(scope="module")
def netd(dev: DevelopmentSet, startModuleNetd: Any) -> Iterator[NetdServer]:
    """
    One netd with two echo services on haproxy: listeners, one with TLS
    (the upstream of netd's own proxy) and one without (behind HAProxy); the
    proxies are added per test.  After the module its log shows no
    unhandled error.
    """
    services = [
        {
            "name": "tls-echo",
            "plugin": "echo",
            "listen": [PROXIED],
            "tls": {"certificate": dev.server, "private_key": dev.serverKey},
        },
        {"name": "echo", "plugin": "echo", "listen": [PROXIED]},
    ]
    server: NetdServer = startModuleNetd(tomli_w.dumps({"services": services}))
    yield server
    assert "Unhandled Error" not in server.log(), server.log()[-4000:]


def addProxy(netd: NetdServer, dev: DevelopmentSet, name: str, port: int, version: str) -> tuple[str, int]:
    """
    A proxy to 127.0.0.1:C{port} with TLS (checked for localhost against
    C{dev}'s CA) and a PROXY header of C{version}; its address.
    """
    table = {
        "name": name,
        "plugin": "proxy",
        "listen": ["tcp:0:interface=127.0.0.1"],
        "upstream": f"tcp:127.0.0.1:{port}",
        "upstream_tls": {"ca_bundle": dev.ca, "server_name": "localhost"},
        "upstream_proxy_protocol": version,
    }
    [bound] = netd.admin.addService(table)["addresses"]
    return str(bound["host"]), int(bound["port"])


def echoThrough(address: tuple[str, int], data: bytes) -> str:
    """
    Send C{data} through the proxy at C{address}, read it back, close; the client's own address, as host:port.
    """
    with connect(address) as client:
        client.sendall(data)
        assert recvExactly(client, len(data)) == data
        host, port = client.getsockname()[:2]
    return f"{host}:{port}"


def connectionEvent(netd: NetdServer, service: str, peer: str) -> dict[str, Any]:
    """
    The service's connection event whose peer is C{peer}, once netd has seen that connection close.
    """
    deadline = time.monotonic() + IO_TIMEOUT
    while True:
        events = netd.admin.events(service, kind="connection")
        found = [e for e in events if e["peer"] == peer]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no connection event of {service} from {peer}: {events}\n{netd.log()[-3000:]}")
        time.sleep(0.02)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_netdReadsTheHeaderThenTLS(netd: NetdServer, dev: DevelopmentSet, version: str) -> None:
    """
    netd's TLS echo behind a haproxy: listener reads the proxy's header, then its TLS: the echo answers, and its connection event names the real client, over TLS.
    """
    proxy = addProxy(netd, dev, f"to-netd-{version}", netd.address("tls-echo")[1], version)
    client = echoThrough(proxy, b"header, then TLS, then this")
    event = connectionEvent(netd, "tls-echo", client)
    assert (event["local"], event["tls"]["sni"]) == (f"{proxy[0]}:{proxy[1]}", "localhost"), event
    counters = netd.admin.service(f"to-netd-{version}")["counters"]
    assert counters.get("upstream_tls_failures", 0) == 0, counters
    netd.admin.removeService(f"to-netd-{version}")


def freePort() -> int:
    """
    A TCP port of 127.0.0.1 that was free a moment ago (HAProxy cannot report one it picked).
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def startHAProxy(directory: Path, pem: Path, backend: int) -> tuple[subprocess.Popen[bytes], int, Path]:
    """
    HAProxy in the foreground, reading a PROXY header and then TLS on a
    port of its own, relaying in TCP mode to C{backend} with a v2 header of
    its own; the process, its port and its log, once it accepts.
    """
    haproxy = requireTool("haproxy")
    for _ in range(5):
        port = freePort()
        config = directory / "haproxy.cfg"
        config.write_text(
            "global\n"
            "    nbthread 1\n"
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 5s\n"
            "    timeout client 30s\n"
            "    timeout server 30s\n"
            "frontend proxied_tls\n"
            f"    bind 127.0.0.1:{port} accept-proxy ssl crt {pem}\n"
            "    default_backend echo\n"
            "backend echo\n"
            f"    server echo 127.0.0.1:{backend} send-proxy-v2\n"
        )
        log = directory / "haproxy.log"
        with log.open("wb") as output:
            process = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + IO_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT).close()
            except OSError:
                time.sleep(0.05)
                continue
            return process, port, log
        stopProcess(process)
        if "in use" not in log.read_text(errors="replace"):
            raise AssertionError(f"HAProxy did not start:\n{log.read_text(errors='replace')}")
    raise AssertionError("HAProxy found no free port")


def test_haproxyAcceptProxySSL(netd: NetdServer, dev: DevelopmentSet, tmp_path: Path) -> None:
    """
    HAProxy's accept-proxy ssl reads the proxy's v2 header and then its TLS, and passes the real client it read on to netd's echo: the echo answers, and its connection event names the client and the address it connected to.
    """
    pem = tmp_path / "server.pem"
    pem.write_text(Path(dev.server).read_text() + Path(dev.serverKey).read_text())
    process, port, log = startHAProxy(tmp_path, pem, netd.address("echo")[1])
    try:
        proxy = addProxy(netd, dev, "to-haproxy", port, "v2")
        client = echoThrough(proxy, b"through haproxy")
        event = connectionEvent(netd, "echo", client)
        assert (event["local"], event["bytes_in"]) == (f"{proxy[0]}:{proxy[1]}", len(b"through haproxy")), event
        counters = netd.admin.service("to-haproxy")["counters"]
        assert counters.get("upstream_tls_failures", 0) == 0, counters
        netd.admin.removeService("to-haproxy")
    finally:
        stopProcess(process)
    assert "ALERT" not in log.read_text(errors="replace")
