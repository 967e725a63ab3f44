"""
netd's test harness (L{netd.testing.harness}) and its pytest fixture C{netd_server}
end to end: real netd processes started from dicts and TOML text, real clients
on the addresses they report, the control API client against a real netd and
against a local HTTP stub that records what it is sent, and no process left
behind.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from netd.testing.harness import AdminClient, AdminError, NetdServer, NetdStartError, netdCommand

from .conftest import IO_TIMEOUT, connect, dig, recvExactly

pytestmark = pytest.mark.integration

Start = Callable[..., NetdServer]

ECHO = {"name": "echo", "plugin": "echo", "listen": ["tcp:0:interface=127.0.0.1", "udp:0:interface=127.0.0.1"]}


def echoConfig(name: str = "echo", **keys: Any) -> dict[str, Any]:
    """
    A config with one echo service on TCP and UDP port 0 of 127.0.0.1.
    """
    return {"services": [{**ECHO, "name": name, **keys}]}


def tcpEcho(address: tuple[str, int], payload: bytes) -> bytes:
    """
    What an echo service sends back for C{payload} over one TCP connection.
    """
    with connect(address) as client:
        client.sendall(payload)
        return recvExactly(client, len(payload))


def udpEcho(address: tuple[str, int], payload: bytes) -> bytes:
    """
    What an echo service sends back for one UDP datagram.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(IO_TIMEOUT)
        client.sendto(payload, address)
        return client.recv(65535)


def alive(pid: int, marker: str) -> bool:
    """
    Whether process C{pid} still exists and is the one started (its command
    line holds C{marker}), from /proc: a reused PID is not mistaken for it.
    """
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


def test_dictConfigServesOnReportedAddresses(netd_server: Start) -> None:
    """
    A netd started from a dict answers echo on the TCP and UDP addresses it reports, which share one port.
    """
    server = netd_server(echoConfig())
    tcp = server.address("echo")
    assert tcp[0] == "127.0.0.1" and tcp[1] > 0
    assert server.address("echo", "udp") == tcp
    assert tcpEcho(tcp, b"over tcp") == b"over tcp"
    assert udpEcho(server.address("echo", "udp"), b"over udp") == b"over udp"
    assert [a["listen"] for a in server.addresses("echo")] == ECHO["listen"]


def test_tomlConfigKeepsItsOwnKeys(netd_server: Start) -> None:
    """
    A netd started from TOML text serves it, with its own [daemon] keys kept and the test's control API added.
    """
    server = netd_server(
        """
        [daemon]
        log_format = "json"

        [[services]]
        name = "lines"
        plugin = "echo"
        listen = ["tcp:0:interface=127.0.0.1"]
        framing = "line"
        """
    )
    assert tcpEcho(server.address("lines"), b"one line\n") == b"one line\n"
    assert server.admin.health() == {"status": "ok"}
    first = server.log().splitlines()[0]
    assert json.loads(first)["logger"] == "netd.daemon.cli"


def test_severalNetdsInOneTest(netd_server: Start) -> None:
    """
    Three netds started in one test run at once, each on its own ports and control API, each answering for itself.
    """
    servers = [netd_server(echoConfig(f"echo{i}")) for i in range(3)]
    assert len({s.pid for s in servers}) == 3
    assert len({s.address(f"echo{i}") for i, s in enumerate(servers)}) == 3
    for i, server in enumerate(servers):
        assert tcpEcho(server.address(f"echo{i}"), f"to {i}".encode()) == f"to {i}".encode()
        assert list(server.admin.services()["services"]) == [f"echo{i}"]


def test_configErrorRaisesWithNetdsMessage(netd_server: Start) -> None:
    """
    A config netd refuses makes the start fail with netd's own message, naming the key path, and no process left.
    """
    with pytest.raises(NetdStartError) as caught:
        netd_server({"services": [{**ECHO, "framming": "line"}]})
    message = str(caught.value)
    assert "services[0].framming" in message
    assert "did you mean 'framing'?" in message
    assert "exited with code 1" in message


def test_tomlSyntaxErrorReportedByNetd(tmp_path: Path) -> None:
    """
    TOML text that does not parse reaches netd as written, and its syntax error is in the start's error; the process is gone.
    """
    server = NetdServer('[[services]]\nname = "echo\n', directory=tmp_path)
    with pytest.raises(NetdStartError) as caught:
        server.start()
    assert "netd.toml" in str(caught.value) and "problem found" in str(caught.value)
    assert server.returncode == 1
    assert not alive(server.pid, str(server.configFile))


def test_startTimeoutStopsTheProcess(tmp_path: Path) -> None:
    """
    A netd not ready within startTimeout makes the start fail saying so, and the process is stopped.
    """
    server = NetdServer(echoConfig(), directory=tmp_path, startTimeout=0)
    with pytest.raises(NetdStartError, match="not ready after 0 seconds"):
        server.start()
    assert server.returncode is not None
    assert not alive(server.pid, str(server.configFile))


def test_contextManagerOutsidePytest() -> None:
    """
    NetdServer as a context manager serves inside the block, and afterwards the process and its temporary folder are gone but the log stays readable.
    """
    with NetdServer(echoConfig()) as server:
        assert server.running
        assert tcpEcho(server.address("echo"), b"ctx") == b"ctx"
        pid, marker, directory = server.pid, str(server.configFile), server.directory
        assert alive(pid, marker)
    assert not server.running
    assert server.returncode == 0
    assert not alive(pid, marker)
    assert not directory.exists()
    assert "netd is ready" in server.log()
    assert server.stop() == 0


def test_stopKillsANetdThatDoesNotExitInTime(tmp_path: Path) -> None:
    """
    A netd still draining an open connection when stopTimeout runs out is killed with SIGKILL, by its PID.
    """
    config = {"daemon": {"shutdown_timeout": 60}, **echoConfig()}
    server = NetdServer(config, directory=tmp_path, stopTimeout=0.5).start()
    with connect(server.address("echo")) as client:
        client.sendall(b"x")
        assert recvExactly(client, 1) == b"x"
        assert server.stop() == -signal.SIGKILL
    assert not alive(server.pid, str(server.configFile))


def test_adminClientAgainstNetd(netd_server: Start) -> None:
    """
    The control API client reads a real netd's services, counters, metrics and connection events, and raises AdminError with the status and JSON body of an error answer.
    """
    server = netd_server(echoConfig())
    assert tcpEcho(server.address("echo"), b"12345") == b"12345"
    admin = server.admin
    assert admin.services()["services"]["echo"]["plugin"] == "echo"
    assert admin.service("echo")["counters"]["bytes_received"] == 5
    assert 'netd_bytes_received_total{service="echo"} 5' in admin.metrics()
    with pytest.raises(AdminError) as caught:
        admin.request("GET", "/no-such-endpoint")
    assert caught.value.status == 404
    assert caught.value.body["error"] == "not found"
    assert "/no-such-endpoint answered 404" in str(caught.value)


def test_adminClientSendsTheConfigsToken(netd_server: Start, tmp_path: Path) -> None:
    """
    With admin_token_file in the config, the client sends its token and is answered; without it netd refuses.
    """
    tokenFile = tmp_path / "admin.token"
    tokenFile.write_text("s3cret\n")
    tokenFile.chmod(0o600)
    server = netd_server({"daemon": {"admin_token_file": str(tokenFile)}, **echoConfig()})
    assert "echo" in server.admin.services()["services"]
    anonymous = AdminClient(server.report["admin"])
    with pytest.raises(AdminError) as caught:
        anonymous.services()
    assert caught.value.status == 401


def test_adminClientSendsTheGeneratedToken(netd_server: Start) -> None:
    """
    Without admin_token_file, netd makes a token (mode 0600, named in the ports file); the harness's client sends it, so changes go through, while a client without it can read but not change.
    """
    server = netd_server(echoConfig())
    tokenFile = Path(server.report["admin"]["token_file"])
    assert tokenFile.parent == server.stateDir
    assert tokenFile.stat().st_mode & 0o777 == 0o600
    assert server.admin.setFaults("echo", [{"type": "latency", "ms": 1}])["faults"][0]["type"] == "latency"
    assert server.admin.clearFaults("echo")["faults"] == []
    assert server.admin.reload()["status"] == "reloaded"
    anonymous = AdminClient(server.report["admin"])
    assert anonymous.faults("echo") == []
    with pytest.raises(AdminError) as caught:
        anonymous.setFaults("echo", [])
    assert caught.value.status == 401


def test_stalePortsFileIsNotBelieved(tmp_path: Path) -> None:
    """
    A ports file left in a reused directory (another process's, port 1) is removed before netd starts; start() waits for the one its own netd writes.
    """
    directory = tmp_path / "reused"
    directory.mkdir()
    stale = {
        "pid": 1,
        "services": {"echo": [{"listen": "tcp:1", "transport": "tcp", "host": "127.0.0.1", "port": 1}]},
        "admin": None,
    }
    (directory / "ports.json").write_text(json.dumps(stale))
    with NetdServer(echoConfig(), directory=directory) as server:
        assert server.report["pid"] == server.pid
        host, port = server.address("echo")
        assert port != 1
        with connect((host, port)) as client:
            client.sendall(b"fresh")
            assert recvExactly(client, 5) == b"fresh"


def test_adminOnUnixSocket(netd_server: Start, tmp_path: Path) -> None:
    """
    A config that places the control API on a unix socket keeps it there, and the client talks HTTP over that socket.
    """
    path = tmp_path / "admin.sock"
    server = netd_server({"daemon": {"admin": f"unix:{path}"}, **echoConfig()})
    assert server.report["admin"]["path"] == str(path)
    assert server.admin.health() == {"status": "ok"}


class RecordingHandler(BaseHTTPRequestHandler):
    """
    Answers every request with C{{"faults": [], "events": [], "records": {}, "scripts": []}}
    and records (method, path, JSON body, Authorization header).
    """

    seen: list[tuple[str, str, Any, str | None]]

    def answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.seen.append((self.command, self.path, body, self.headers.get("Authorization")))
        data = json.dumps(
            {"faults": [{"type": "slice"}], "events": [{"seq": 1}], "records": {}, "scripts": []}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_DELETE = do_POST = answer

    def log_message(self, format: str, *args: Any) -> None:
        """
        Quiet.
        """


@pytest.fixture
def stub() -> Iterator[tuple[AdminClient, list[tuple[str, str, Any, str | None]]]]:
    """
    An L{AdminClient} with a token, pointed at a L{RecordingHandler} on a loopback port, and what it was sent.
    """
    seen: list[tuple[str, str, Any, str | None]] = []
    handler = type("Handler", (RecordingHandler,), {"seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield AdminClient({"transport": "tcp", "host": "127.0.0.1", "port": httpd.server_address[1]}, token="t0k"), seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(IO_TIMEOUT)


def test_adminClientWireFormat(stub: tuple[AdminClient, list[tuple[str, str, Any, str | None]]]) -> None:
    """
    Each table method sends the method, path, query and JSON body of the control API's runtime tables, with the bearer token, and unwraps the answer.
    """
    admin, seen = stub
    fault = {"type": "reset_after", "bytes": 0, "first": 2}
    assert admin.faults("dns/1") == [{"type": "slice"}]
    admin.setFaults("echo", [fault])
    admin.clearFaults("echo")
    assert admin.events("echo", kind="connection", since=7, limit=3) == [{"seq": 1}]
    admin.events("echo")
    admin.clearEvents("echo")
    assert admin.records("dns") == {}
    admin.setRecords("dns", {"api.test": {"A": ["192.0.2.7"]}})
    admin.deleteRecords("dns", "a.test", "b.test")
    admin.deleteRecords("dns")
    assert admin.scripts("dns") == []
    admin.setScripts("dns", [{"name": "api.test", "rcode": "SERVFAIL", "first": 2}])
    admin.clearScripts("dns")
    admin.reload()
    assert [(method, path, body) for method, path, body, _ in seen] == [
        ("GET", "/services/dns%2F1/faults", None),
        ("PUT", "/services/echo/faults", {"faults": [fault]}),
        ("DELETE", "/services/echo/faults", None),
        ("GET", "/services/echo/events?kind=connection&since=7&limit=3", None),
        ("GET", "/services/echo/events", None),
        ("DELETE", "/services/echo/events", None),
        ("GET", "/services/dns/records", None),
        ("PUT", "/services/dns/records", {"records": {"api.test": {"A": ["192.0.2.7"]}}}),
        ("DELETE", "/services/dns/records?name=a.test&name=b.test", None),
        ("DELETE", "/services/dns/records", None),
        ("GET", "/services/dns/scripts", None),
        ("PUT", "/services/dns/scripts", {"scripts": [{"name": "api.test", "rcode": "SERVFAIL", "first": 2}]}),
        ("DELETE", "/services/dns/scripts", None),
        ("POST", "/reload", {}),
    ]
    assert {token for *_, token in seen} == {"Bearer t0k"}


def test_tcpAndUdpShareOnePortForDig(netd_server: Start) -> None:
    """
    A dns-proxy on tcp:0 and udp:0 of 127.0.0.1 gets one port for both, so dig answers on it plainly, with +tcp, and after a truncated UDP answer retries over TCP on it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        dns = {
            "name": "dns",
            "plugin": "dns-proxy",
            "listen": ["tcp:0:interface=127.0.0.1", "udp:0:interface=127.0.0.1"],
            "upstreams": [f"udp:127.0.0.1:{silent.getsockname()[1]}"],
            "records": {
                "netd.test": {"A": ["127.0.0.1"]},
                "big.netd.test": {"TXT": [c * 200 for c in "xyz"]},
            },
        }
        server = netd_server({"services": [dns]})
        address = server.address("dns", "tcp")
        assert server.address("dns", "udp") == address
        assert server.report["services"]["dns"][0]["port"] == server.report["services"]["dns"][1]["port"]
        assert dig(address, "netd.test", "A").last.data() == ["127.0.0.1"]
        assert dig(address, "+tcp", "netd.test", "A").last.data() == ["127.0.0.1"]
        big = dig(address, "+noedns", "big.netd.test", "TXT")
        assert big.retriedOverTcp, big.output
        assert len(big.last.data("TXT")) == 3
        assert "tc" not in big.last.flags


def test_noProcessLeftBehind(tmp_path: Path) -> None:
    """
    Every netd this module's harness started, failed starts included, is gone from /proc once stopped.
    """
    servers = [NetdServer(echoConfig(), directory=tmp_path / str(i)) for i in range(3)]
    for server in servers[:2]:
        server.start()
    with pytest.raises(NetdStartError):
        NetdServer({"services": [{**ECHO, "plugin": "no-such-plugin"}]}, directory=tmp_path / "bad").start()
    markers = [(s.pid, str(s.configFile)) for s in servers[:2]]
    assert all(alive(pid, marker) for pid, marker in markers)
    for server in servers:
        server.stop()
        server.stop()
    assert not any(alive(pid, marker) for pid, marker in markers)
    assert servers[2].stop() is None
    assert os.path.exists(tmp_path / "0" / "netd.log")


def test_launcherEnvironmentAndPreexec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A server runs netd behind the launcher it is given, with the environment changes and the preexec function applied in the child, and without the systemd variables meant for the test runner.
    """
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1000, 1000))

    launcher = ["env", "NETD_HARNESS_LAUNCHER=1", *netdCommand("run")]
    with NetdServer(
        echoConfig(), tmp_path, launcher=launcher, environment={"NETD_HARNESS_VARIABLE": "set"}, preexec=limited
    ) as server:
        assert tcpEcho(server.address("echo"), b"launched") == b"launched"
        environment = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        assert b"NETD_HARNESS_LAUNCHER=1" in environment and b"NETD_HARNESS_VARIABLE=set" in environment
        assert not any(entry.startswith(b"NOTIFY_SOCKET=") for entry in environment)
        limits = Path(f"/proc/{server.pid}/limits").read_text()
        assert [line.split()[3:5] for line in limits.splitlines() if line.startswith("Max open files")] == [
            ["1000", "1000"]
        ]


def test_configFileRunsAsItIs(tmp_path: Path) -> None:
    """
    A config given as a file's path is run as it is: nothing is added (here: no control API) and the file is not rewritten.
    """
    file = tmp_path / "mine.toml"
    text = '# mine\n[[services]]\nname = "echo"\nplugin = "echo"\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
    file.write_text(text)
    with NetdServer(file, tmp_path / "files") as server:
        assert server.configFile == file and file.read_text() == text
        assert server.adminAddress is None
        assert tcpEcho(server.address("echo"), b"as is") == b"as is"


def test_serverAnswersForTheControlAPI(netd_server: Start, tmp_path: Path) -> None:
    """
    The server reads a counter from /metrics, passes an error status back from api() instead of raising, and gives the URL and token header for a client of one's own; unixPath and rssBytes answer for the process.
    """
    path = tmp_path / "echo.sock"
    server = netd_server(echoConfig(listen=["tcp:0:interface=127.0.0.1", f"unix:{path}"]))
    assert server.counter("bytes_received", "echo") == 0
    assert tcpEcho(server.address("echo"), b"12345") == b"12345"
    assert server.counter("bytes_received", "echo") == 5
    status, answer = server.api("GET", "/no-such-endpoint")
    assert status == 404 and answer["error"] == "not found"
    status, answer = server.api("PUT", "/services/echo/faults", {"faults": [{"type": "latency", "ms": 1}]})
    assert status == 200 and answer["faults"][0]["type"] == "latency"
    request = urllib.request.Request(
        server.adminURL("/services/echo/faults"), method="DELETE", headers=server.adminHeaders()
    )
    with urllib.request.urlopen(request, timeout=IO_TIMEOUT) as response:
        assert json.loads(response.read())["faults"] == []
    assert server.unixPath("echo") == str(path)
    assert [entry["transport"] for entry in server.services["echo"]] == ["tcp", "unix"]
    assert server.rssBytes() > 1 << 20


def test_waitUntilReadyReadsTheAddressesAgain(netd_server: Start) -> None:
    """
    After a reload that adds a service, waitUntilReady reads the ports file again and the new service's address is known.
    """
    server = netd_server(echoConfig())
    server.configFile.write_text(
        server.configFile.read_text()
        + '[[services]]\nname = "more"\nplugin = "echo"\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
    )
    server.admin.reload()
    assert tcpEcho(server.waitUntilReady().address("more"), b"added") == b"added"


@pytest.mark.parametrize(
    ("stop", "code"), [(lambda server: server.stop(signal.SIGINT), 0), (NetdServer.kill, -signal.SIGKILL)]
)
def test_stopWithASignalAndKill(tmp_path: Path, stop: Callable[[NetdServer], object], code: int) -> None:
    """
    stop() sends the signal it is given (netd exits 0 on SIGINT), and kill() ends netd with SIGKILL at once.
    """
    server = NetdServer(echoConfig(), tmp_path).start()
    stop(server)
    assert server.returncode == code and not server.running
    assert not alive(server.pid, str(server.configFile))


def test_startWithoutWaiting(tmp_path: Path) -> None:
    """
    start(wait=False) returns before netd is ready, with no report yet, and a config netd refuses shows as its exit code, not as an error of the start.
    """
    server = NetdServer({"services": [{**ECHO, "plugin": "no-such-plugin"}]}, tmp_path).start(wait=False)
    assert server.report == {}
    assert server.process is not None and server.process.wait(timeout=20) == 1
    with pytest.raises(NetdStartError, match="exited with code 1"):
        server.waitUntilReady()
    assert "no-such-plugin" in server.log()
