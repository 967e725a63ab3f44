"""
The control API end to end: netd runs as a subprocess with its API on port 0
(or a unix socket), and plain HTTP clients (urllib, a raw unix socket) read
/health, /ready, /services and /metrics while echo and DNS clients make traffic;
/metrics is parsed with prometheus_client's parser and its values must move.
"""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from netd.testing.harness import NetdServer

from .conftest import IO_TIMEOUT, connect, dig, echoService, recvExactly, requireTool
from .dns_upstream import Dnsmasq, answerRcode, askUdp, buildQuery

pytestmark = pytest.mark.integration

ADMIN = 'admin = "tcp:0:interface=127.0.0.1"'
DNS = """\
[[services]]
name = "dns"
plugin = "dns-proxy"
listen = ["udp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"]
upstreams = [{upstream}]
timeout = 0.5
deadline = 1.0

[services.records]
"netd.test" = {{ A = ["127.0.0.1"] }}
"""


def config(*, daemon: str = ADMIN, upstream: str = "udp:127.0.0.1:9") -> str:
    """
    An echo service (TCP and UDP) and a dns-proxy service with a static record, under C{daemon}.
    """
    echo = echoService("echo", ["tcp:0:interface=127.0.0.1", "udp:0:interface=127.0.0.1"])
    return f"[daemon]\n{daemon}\n\n{echo}{DNS.format(upstream=json.dumps(upstream))}"


def get(
    netd: NetdServer, path: str, token: str | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """
    One request to netd's control API: status, headers (lower-case names) and body; error statuses are returned, not raised.  A request that may change something carries netd's token unless C{token} is given.
    """
    request = urllib.request.Request(netd.adminURL(path), method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    elif method != "GET":
        for name, value in netd.adminHeaders().items():
            request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=IO_TIMEOUT) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def metrics(netd: NetdServer, token: str | None = None) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """
    netd's /metrics, parsed by prometheus_client, by (sample name, labels).
    """
    status, headers, body = get(netd, "/metrics", token)
    assert status == 200, body
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    """
    A sample's key in L{metrics}.
    """
    return name, frozenset(labels.items())


def test_endpointsOverTheWire(startNetd: Any) -> None:
    """
    Over real HTTP, /health and /ready answer 200, and /services shows each service's plugin and the ports netd picked for port 0.
    """
    netd: NetdServer = startNetd(config())
    assert (
        netd.adminAddress is not None
        and netd.adminAddress["listen"] == "tcp:0:interface=127.0.0.1"
        and netd.adminAddress["port"] != 0
    )
    status, headers, body = get(netd, "/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert headers["content-type"] == "application/json"
    status, _, body = get(netd, "/ready")
    assert (status, json.loads(body)) == (200, {"status": "ready"})
    status, _, body = get(netd, "/services")
    services = json.loads(body)["services"]
    assert status == 200
    assert services["echo"]["plugin"] == "echo"
    assert services["echo"]["addresses"] == netd.services["echo"]
    assert ("127.0.0.1", services["echo"]["addresses"][0]["port"]) == netd.address("echo", "tcp")
    assert services["dns"]["plugin"] == "dns-proxy"
    assert services["dns"]["status"]["upstreams"][0]["upstream"] == "udp:127.0.0.1:9"
    status, _, body = get(netd, "/nope")
    assert (status, json.loads(body)["error"]) == (404, "not found")
    status, headers, body = get(netd, "/health", method="POST")
    assert (status, headers["allow"]) == (405, "GET, HEAD")
    status, _, body = get(netd, "/reload", method="POST")
    assert status in (200, 501, 422), body
    assert "Traceback" not in body.decode()


def test_metricsMoveWithTraffic(startNetd: Any) -> None:
    """
    After echo bytes over TCP and UDP and DNS queries, the byte, datagram, query-type, rcode and static-answer counters in /metrics have grown by exactly that traffic (an open connection's bytes already while it is open).
    """
    netd: NetdServer = startNetd(config())
    before = metrics(netd)
    payload = b"0123456789" * 10
    with connect(netd.address("echo", "tcp")) as client:
        client.sendall(payload)
        assert recvExactly(client, len(payload)) == payload
        during = metrics(netd)
        assert during[key("netd_connections_open", service="echo")] == 1
        openBytes = during[key("netd_bytes_received_total", service="echo")] - before.get(
            key("netd_bytes_received_total", service="echo"), 0
        )
        assert openBytes == len(payload), "an open connection's bytes are counted before it closes"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(IO_TIMEOUT)
        udp.sendto(b"ping", netd.address("echo", "udp"))
        assert udp.recv(100) == b"ping"
    host, port = netd.address("dns", "udp")
    for _ in range(3):
        query = buildQuery("netd.test", 1)
        answer = askUdp(host, port, query, timeout=IO_TIMEOUT)
        assert answer is not None and answerRcode(query, answer) == 0
    after = metrics(netd)

    def grew(name: str, **labels: str) -> float:
        return after[key(name, **labels)] - before.get(key(name, **labels), 0)

    assert grew("netd_bytes_received_total", service="echo") == len(payload)
    assert grew("netd_bytes_sent_total", service="echo") == len(payload)
    assert grew("netd_connections_accepted_total", service="echo") == 1
    assert grew("netd_datagrams_received_total", service="echo") == 1
    assert grew("netd_dns_queries_total", service="dns", qtype="A") == 3
    assert grew("netd_dns_answers_total", service="dns", rcode="NOERROR") == 3
    assert grew("netd_static_answers_total", service="dns") == 3
    assert grew("netd_queries_udp_total", service="dns") == 3
    assert grew("netd_datagrams_received_total", service="dns") == 3
    assert after[key("netd_ready")] == 1
    assert after[key("netd_service_info", service="dns", plugin="dns-proxy")] == 1


def test_upstreamLatencyHistogram(startNetd: Any, dnsUpstream: Dnsmasq) -> None:
    """
    A query forwarded to a real upstream (dnsmasq) is counted in the upstream latency histogram, in seconds, in its buckets, sum and count.
    """
    netd: NetdServer = startNetd(config(upstream=dnsUpstream.upstream))
    before = metrics(netd)
    host, port = netd.address("dns", "udp")
    query = buildQuery("www.example.test", 1)
    answer = askUdp(host, port, query, timeout=IO_TIMEOUT)
    assert answer is not None and answerRcode(query, answer) == 0
    after = metrics(netd)
    name = "netd_upstream_latency_seconds"
    count = after[key(f"{name}_count", service="dns")]
    assert count - before[key(f"{name}_count", service="dns")] >= 1
    assert after[key(f"{name}_bucket", service="dns", le="+Inf")] == count
    assert after[key(f"{name}_bucket", service="dns", le="10.0")] == count
    assert 0 < after[key(f"{name}_sum", service="dns")] < 10 * count
    assert after[key("netd_upstream_answers_total", service="dns")] >= 1


def test_tokenOverTheWire(startNetd: Any, tmp_path: Path) -> None:
    """
    With admin_token_file, /services and /metrics answer 401 with WWW-Authenticate without the token or with a wrong one, 200 with it, and /health answers without it.
    """
    tokenFile = tmp_path / "admin.token"
    tokenFile.write_text("correct horse battery staple\n")
    tokenFile.chmod(0o600)
    netd: NetdServer = startNetd(config(daemon=f'{ADMIN}\nadmin_token_file = "{tokenFile}"'))
    for token in (None, "wrong"):
        status, headers, body = get(netd, "/services", token)
        assert status == 401
        assert headers["www-authenticate"].startswith('Bearer realm="netd"')
        assert json.loads(body)["error"] == "unauthorized"
    status, _, body = get(netd, "/services", "correct horse battery staple")
    assert status == 200 and "echo" in json.loads(body)["services"]
    assert key("netd_ready") in metrics(netd, "correct horse battery staple")
    assert get(netd, "/health")[0] == 200


def test_readyTurns503WhileDraining(startNetd: Any) -> None:
    """
    After SIGTERM, while an open echo connection holds the drain, /ready answers 503 "stopping" and the API still answers; netd then exits 0.
    """
    netd: NetdServer = startNetd(config(daemon=f"{ADMIN}\nshutdown_timeout = 20"))
    with connect(netd.address("echo", "tcp")) as client:
        client.sendall(b"hold")
        assert recvExactly(client, 4) == b"hold"
        netd.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + IO_TIMEOUT
        while True:
            status, _, body = get(netd, "/ready")
            if status == 503:
                break
            assert time.monotonic() < deadline, "/ready did not turn 503 after SIGTERM"
            time.sleep(0.05)
        assert json.loads(body)["status"] == "stopping"
        assert metrics(netd)[key("netd_ready")] == 0
    assert netd.process.wait(timeout=30) == 0


def test_adminOnUnixSocket(startNetd: Any, tmp_path: Path) -> None:
    """
    admin = "unix:PATH" serves the API on that socket, mode 0600 and without a token, reported with its path in the ports file.
    """
    path = tmp_path / "admin.sock"
    netd: NetdServer = startNetd(config(daemon=f'admin = "unix:{path}"'))
    assert netd.adminAddress == {"listen": f"unix:{path}", "transport": "unix", "path": str(path), "token_file": None}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(IO_TIMEOUT)
        client.connect(str(path))
        client.sendall(b"GET /ready HTTP/1.0\r\nHost: localhost\r\n\r\n")
        response = b""
        while chunk := client.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), response
    assert json.loads(body) == {"status": "ready"}


def curl(netd: NetdServer, method: str, path: str, *args: str) -> tuple[int, str]:
    """
    Run the real curl against netd's control API: the status and the body.
    """
    command = [requireTool("curl"), "-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, *args, netd.adminURL(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=IO_TIMEOUT * 2, stdin=subprocess.DEVNULL)
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


def test_webPageRequestsCannotChangeRecords(startNetd: Any) -> None:
    """
    With curl forging what a web page sends (a rebinding Host, a form's text/plain body, a cross-site Origin, no token), netd refuses each with 421, 415, 403 or 401 and dig still gets the configured answer; the same change with the token and JSON goes through.
    """
    netd: NetdServer = startNetd(config())
    dns = netd.address("dns", "udp")
    auth = next(iter(netd.adminHeaders().items()))
    token = f"{auth[0]}: {auth[1]}"
    body = json.dumps({"records": {"netd.test": {"A": ["192.0.2.66"]}, "*.com": {"A": ["192.0.2.66"]}}})
    attacks = [
        (421, ["-H", "Host: attacker.example", "-H", token, "-H", "Content-Type: application/json", "-d", body]),
        (421, ["-H", "Host: attacker.example:8053", "-H", "Content-Type: text/plain", "-d", body]),
        (415, ["-H", token, "-H", "Content-Type: text/plain", "-d", body]),
        (415, ["-H", token, "-d", body]),
        (
            403,
            ["-H", token, "-H", "Origin: http://attacker.example", "-H", "Content-Type: application/json", "-d", body],
        ),
        (401, ["-H", "Content-Type: application/json", "-d", body]),
    ]
    for code, args in attacks:
        status, answer = curl(netd, "PUT", "/services/dns/records", *args)
        assert status == code, (args, answer)
        assert "error" in json.loads(answer)
    for code, args in [
        (403, ["-H", token, "-H", "Origin: null"]),
        (401, []),
        (421, ["-H", token, "-H", "Host: a.example"]),
    ]:
        status, answer = curl(netd, "POST", "/reload", *args)
        assert status == code, (args, answer)
    assert dig(dns, "netd.test", "A").last.data() == ["127.0.0.1"]
    assert dig(dns, "example.com", "A").last.data() != ["192.0.2.66"]
    refused = metrics(netd)
    assert refused[key("netd_admin_requests_refused_total", reason="host")] == 3
    assert refused[key("netd_admin_requests_refused_total", reason="content_type")] == 2
    assert refused[key("netd_admin_requests_refused_total", reason="origin")] == 2
    assert refused[key("netd_admin_requests_refused_total", reason="token")] == 2
    status, answer = curl(
        netd, "PUT", "/services/dns/records", "-H", token, "-H", "Content-Type: application/json", "-d", body
    )
    assert status == 200, answer
    assert dig(dns, "netd.test", "A").last.data() == ["192.0.2.66"]


def test_largeUnauthenticatedBodyIsNeverRead(startNetd: Any) -> None:
    """
    Over a real socket, a PUT announcing 200 MB without the token is answered 401 before any body byte is sent, the connection is closed, and sending the body then fails long before 200 MB; netd's memory does not grow by the body.
    """
    netd: NetdServer = startNetd(config())
    before = netd.rssBytes()
    host, port = str(netd.adminAddress["host"]), int(netd.adminAddress["port"])  # type: ignore[index,call-overload]
    with connect((host, port)) as client:
        client.sendall(
            b"PUT /services/dns/records HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 200000000\r\n\r\n"
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = client.recv(65536)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 401 "), answer
        sent = 0
        chunk = b"x" * 65536
        with pytest.raises(OSError):
            while sent < 200_000_000:
                sent += client.send(chunk)
        assert sent < 50_000_000, sent
    assert netd.rssBytes() - before < 20_000_000
    status, _, _ = get(netd, "/health")
    assert status == 200


def test_connectionCapOverTheWire(startNetd: Any) -> None:
    """
    With admin_max_connections = 2 and two idle real connections held open (one with half a request), a third request is served: netd closes the oldest idle connection to admit it, and counts it.
    """
    netd: NetdServer = startNetd(config(daemon=f"{ADMIN}\nadmin_max_connections = 2"))
    host, port = str(netd.adminAddress["host"]), int(netd.adminAddress["port"])  # type: ignore[index,call-overload]
    with connect((host, port)) as oldest, connect((host, port)) as younger:
        younger.sendall(b"GET /health HTTP/1.1\r\nHost: loc")
        deadline = time.monotonic() + IO_TIMEOUT
        while metrics(netd).get(key("netd_admin_connections_evicted_total"), 0) < 1:
            assert time.monotonic() < deadline, "no connection was evicted"
            time.sleep(0.05)
        try:
            assert oldest.recv(1024) == b""
        except ConnectionResetError:
            pass
        status, _, body = get(netd, "/health")
        assert status == 200, body
