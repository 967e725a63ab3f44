"""
Reloading a running netd (SIGHUP and POST /reload) under load: a client keeps
one echo connection open and DNS queries flowing (UDP, and many on one TCP
connection) while the config file is rewritten and reloaded several times.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest

from netd.testing.harness import NetdServer

from .conftest import IO_TIMEOUT, connect, echoService, recvExactly, waitForLog, withTestAdmin
from .dns_upstream import answerRcode, askUdp, buildQuery

pytestmark = pytest.mark.integration

DNS = """\
[[services]]
name = "dns"
plugin = "dns-proxy"
listen = ["udp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"]
upstreams = ["udp:127.0.0.1:9"]
timeout = 0.5
deadline = 1.0

[services.records]
"netd.test" = { A = ["127.0.0.1"] }

"""

LOOPBACK = ["tcp:0:interface=127.0.0.1"]


def config(*extra: str) -> str:
    """
    The echo service the client holds a connection to, the dns-proxy it queries, then C{extra} service tables.
    """
    return echoService("echo", LOOPBACK) + DNS + "".join(extra)


class DnsLoad:
    """
    Two threads querying a static name until stopped: one over UDP (a new
    socket per query), one over a single TCP connection; every query that
    goes unanswered (or not NOERROR) is recorded.
    """

    def __init__(self, netd: NetdServer) -> None:
        self.udp = netd.address("dns", "udp")
        self.tcp = netd.address("dns", "tcp")
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.answered = {"udp": 0, "tcp": 0}
        self.threads = [threading.Thread(target=self._udp), threading.Thread(target=self._tcp)]

    def __enter__(self) -> DnsLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=IO_TIMEOUT)
            assert not thread.is_alive(), "a DNS client thread did not stop"

    def _udp(self) -> None:
        while not self.stop.is_set():
            query = buildQuery("netd.test")
            answer = askUdp(*self.udp, query, timeout=2.0)
            if answer is None or answerRcode(query, answer) != 0:
                self.failures.append(f"udp: {answer!r}")
            else:
                self.answered["udp"] += 1
            self.stop.wait(0.01)

    def _tcp(self) -> None:
        try:
            with connect(self.tcp) as client:
                while not self.stop.is_set():
                    query = buildQuery("netd.test")
                    client.sendall(struct.pack("!H", len(query)) + query)
                    (length,) = struct.unpack("!H", recvExactly(client, 2))
                    answer = recvExactly(client, length)
                    if answerRcode(query, answer) != 0:
                        self.failures.append(f"tcp: {answer!r}")
                    else:
                        self.answered["tcp"] += 1
                    self.stop.wait(0.01)
        except (OSError, AssertionError) as e:
            self.failures.append(f"tcp connection: {e!r}")


def echoes(client: socket.socket, payload: bytes) -> None:
    """
    Check that the held echo connection still echoes.
    """
    client.sendall(payload)
    assert recvExactly(client, len(payload)) == payload


def rewrite(netd: NetdServer, text: str) -> None:
    """
    Replace netd's config file (with the harness's control API kept).
    """
    assert netd.configFile is not None
    netd.configFile.write_text(withTestAdmin(text))


def postReload(netd: NetdServer) -> tuple[int, dict[str, Any]]:
    """
    POST /reload on the control API: the status and the JSON body.
    """
    headers = {"Content-Type": "application/json", **netd.adminHeaders()}
    request = urllib.request.Request(netd.adminURL("/reload"), method="POST", data=b"{}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=IO_TIMEOUT * 2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_reloadsUnderLoadLoseNothing(startNetd: Any) -> None:
    """
    Across reloads by SIGHUP and POST /reload that change, add and remove another service, and one of a bad file, the held echo connection keeps echoing, no DNS query goes unanswered, and the ports file follows the services.
    """
    other = echoService("other", LOOPBACK)
    netd: NetdServer = startNetd(config(other))
    with connect(netd.address("echo")) as client, DnsLoad(netd) as load:
        echoes(client, b"before")

        rewrite(netd, config(echoService("other", LOOPBACK, max_connections=7)))
        netd.process.send_signal(signal.SIGHUP)
        waitForLog(netd, "reload: service other (echo) changed", timeout=IO_TIMEOUT)
        assert "reload: service echo (echo) unchanged" in netd.log()
        assert "reload: service dns (dns-proxy) unchanged" in netd.log()
        echoes(client, b"after a change")

        rewrite(netd, config(other, echoService("extra", LOOPBACK)))
        netd.process.send_signal(signal.SIGHUP)
        waitForLog(netd, "reload: service extra (echo) added", timeout=IO_TIMEOUT)
        netd.waitUntilReady()
        assert set(netd.services) == {"echo", "dns", "other", "extra"}
        with connect(netd.address("extra")) as extra:
            echoes(extra, b"new service")
        echoes(client, b"after an add")

        rewrite(
            netd, config(other) + '[[services]]\nname = "broken"\nplugin = "no-such-plugin"\nlisten = ["bogus:1"]\n'
        )
        netd.process.send_signal(signal.SIGHUP)
        log = waitForLog(netd, "nothing was changed", timeout=IO_TIMEOUT)
        assert "no-such-plugin" in log and "bogus" in log
        assert netd.process.poll() is None
        echoes(client, b"after a bad file")
        with connect(netd.address("extra")) as extra:
            echoes(extra, b"still there")

        rewrite(netd, config(other))
        status, body = postReload(netd)
        assert status == 200, body
        assert (body["removed"], sorted(body["unchanged"])) == (["extra"], ["dns", "echo", "other"])
        netd.waitUntilReady()
        assert set(netd.services) == {"echo", "dns", "other"}
        echoes(client, b"after POST /reload")

        rewrite(netd, config(other) + "[[services]]\nname = 1\n")
        status, body = postReload(netd)
        assert status == 422, body
        echoes(client, b"at the end")
    assert load.failures == []
    assert load.answered["udp"] > 0 and load.answered["tcp"] > 0, load.answered
    assert netd.stop() == 0


def test_sigtermDuringReloadWaitsForIt(startNetd: Any) -> None:
    """
    A real SIGTERM that arrives while a reload waits to retry a busy port lets the reload be undone first, then drains and exits 0, with the held connection closed and nothing left listening.
    """
    netd: NetdServer = startNetd(echoService("echo", LOOPBACK))
    address = netd.address("echo")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        busy = holder.getsockname()[1]
        rewrite(netd, echoService("echo", [LOOPBACK[0], f"tcp:{busy}:interface=127.0.0.1"]))
        netd.process.send_signal(signal.SIGHUP)
        waitForLog(netd, "retrying in", timeout=IO_TIMEOUT)
        netd.process.send_signal(signal.SIGTERM)
        assert netd.process.wait(timeout=IO_TIMEOUT * 2) == 0
    log = netd.log()
    waiting = log.index("stopping: waiting for the reload in progress to finish or be undone")
    undone = log.index("undoing the reload")
    assert waiting < undone, log
    assert "Traceback" not in log and "Unhandled" not in log, log
    with pytest.raises(OSError):
        connect(address).close()
