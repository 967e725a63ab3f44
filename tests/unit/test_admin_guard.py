"""
What guards the control API (L{netd.daemon.api.guard}) against web pages and hostile
clients, over in-memory HTTP: the C{Host} and C{Origin} checks, JSON-only
bodies, the token netd makes itself, the token file's checks, a request
refused from its headers before its body is read, chunked and over-size
bodies, the connection cap, and the unix socket's mode.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs

from netd.config.options import ConfigError
from netd.daemon.api.guard import hostAllowed, originAllowed
from netd.daemon.api.http import AdminSite
from netd.daemon.api.tokens import MAX_TOKEN, TokenFileError, readToken
from netd.daemon.application import NetdApplication
from netd.daemon.daemon import Daemon
from netd.daemon.openapi import MAX_TABLE_BODY
from netd.daemon.service import ServiceStartError
from netd.testing.memory import resultOf

from .test_admin import (
    DNS,
    ECHO,
    TOKEN,
    Reactor,
    applicationOf,
    bearer,
    key,
    makeConfig,
    metrics,
    request,
    samples,
    send,
    started,
)


def token(reactor: Reactor) -> str:
    """
    The token netd made for the control API of C{reactor}'s daemon.
    """
    site = reactor.site()
    assert isinstance(site, AdminSite)
    access = site.guard.access
    assert access.token is not None
    return str(access.token.decode())


def tokenFile(tmp_path: Path, text: str = TOKEN, mode: int = 0o600) -> Path:
    """
    A token file holding C{text}, with C{mode}.
    """
    path = tmp_path / "admin.token"
    path.write_text(text)
    path.chmod(mode)
    return path


def refusals(reactor: Reactor) -> dict[str, float]:
    """
    The C{netd_admin_requests_refused_total} samples of the daemon's /metrics, by reason.
    """
    found = samples(metrics(reactor))
    return {
        dict(labels)["reason"]: value
        for (name, labels), value in found.items()
        if name == "netd_admin_requests_refused_total"
    }


# Host.


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:8053",
        "LOCALHOST:1",
        "127.0.0.1",
        "127.0.0.1:8053",
        "127.9.8.7:80",
        "[::1]",
        "[::1]:8053",
    ],
)
def test_loopbackHostsAreAnswered(host: str) -> None:
    """
    localhost and loopback literals, with or without a port, are hosts the API answers to.
    """
    daemon, reactor = started(ECHO)
    assert request(reactor.site(), "GET", "/services", headers={"Host": host}).code == 200


@pytest.mark.parametrize(
    "host",
    [
        "attacker.example",
        "attacker.example:8053",
        "localhost.attacker.example",
        "127.0.0.1.nip.io",
        "10.0.0.1",
        "::1",
        "[::1",
        "localhost:port",
        "[::ffff:7f00:1]:x",
        "",
    ],
)
def test_foreignHostIsRefused(host: str) -> None:
    """
    A Host that is not loopback, localhost or a configured name (a DNS rebinding page's) answers 421 in JSON, logged and counted, for reads and changes alike.
    """
    daemon, reactor = started(ECHO)
    with capturedLogs() as events:
        response = request(reactor.site(), "GET", "/services", headers={"Host": host})
        changed = request(
            reactor.site(), "PUT", "/services/echo/faults", headers={"Host": host}, body=b'{"faults": []}'
        )
    assert response.code == 421
    assert response.json()["error"] == "misdirected request"
    assert changed.code == 421
    assert refusals(reactor)["host"] == 2
    assert any(e["log_level"] == LogLevel.warn and e.get("reason") == "host" for e in events)


def test_missingHostIsRefused() -> None:
    """
    A request without a Host header is refused like one with a foreign Host.
    """
    daemon, reactor = started(ECHO)
    assert request(reactor.site(), "GET", "/services", headers={"Host": None}).code == 421  # type: ignore[dict-item]


def test_adminHostsAndTheBoundAddressAreAnswered() -> None:
    """
    The names of [daemon] admin_hosts (any case) and the address the API listens on are answered; other names are not.
    """
    daemon, reactor = started(ECHO, admin_hosts=["netd.internal"])
    site = reactor.site()
    assert request(site, "GET", "/services", headers={"Host": "NETD.internal:8053"}).code == 200
    assert request(site, "GET", "/services", headers={"Host": "other.internal"}).code == 421
    assert isinstance(site, AdminSite) and site.guard.access.hosts >= {"netd.internal", "127.0.0.1"}


def test_theAddressARequestArrivedOnIsAnswered(tmp_path: Path) -> None:
    """
    Bound to 0.0.0.0, the API answers to the address literal a request
    arrived on (a pod's IP, which a Kubernetes probe, Prometheus or a load
    balancer's health check names as Host and no config can know), and not
    to another address or a name: a rebinding page's Host is a name.
    """
    daemon, reactor = started(ECHO, admin="tcp:0:interface=0.0.0.0", admin_token_file=str(tokenFile(tmp_path)))
    site = reactor.site()
    headers = bearer(TOKEN)

    def code(host: str) -> int:
        return send(site, "GET", "/metrics", headers={**headers, "Host": host}, localAddress="10.1.2.3").response().code

    assert code("10.1.2.3:8053") == 200
    assert code("10.1.2.3") == 200
    assert code("10.1.2.4:8053") == 421
    assert code("pod.attacker.example:8053") == 421


def test_adminHostsMustBeHostNames() -> None:
    """
    An admin_hosts entry that is not a host name is a config error naming the key.
    """
    with pytest.raises(ConfigError, match="daemon.admin_hosts: 'bad host/' is not a host name"):
        makeConfig(ECHO, admin_hosts=["bad host/"])


def test_hostAndOriginParsing() -> None:
    """
    hostAllowed takes only well-formed host[:port] values; originAllowed only http:// origins of such hosts.
    """
    names = frozenset({"netd.test"})
    assert hostAllowed(b"netd.test:1", names)
    assert not hostAllowed(b"netd.test:123456", names)
    assert not hostAllowed(b"[::1]x", names)
    assert not hostAllowed(b"\xff", names)
    assert originAllowed(b"http://localhost:8053", names)
    assert originAllowed(b"http://[::1]", names)
    assert originAllowed(b"http://netd.test", names)
    assert not originAllowed(b"https://localhost", names)
    assert not originAllowed(b"null", names)
    assert not originAllowed(b"http://localhost/x", names)
    assert not originAllowed(b"http://evil.example", names)


# Origin.


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "https://evil.example", "null", "http://localhost.evil.example"]
)
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("POST", "/reload", b"", id="empty-post"),
        pytest.param("PUT", "/services/echo/faults", b'{"faults": []}', id="put"),
        pytest.param("DELETE", "/services/echo/events", b"", id="delete"),
    ],
)
def test_foreignOriginCannotChange(origin: str, method: str, path: str, body: bytes) -> None:
    """
    A request that changes something from a page of another origin (a form post, or fetch() with POST and no body, which needs no preflight) answers 403, even with the token.
    """
    daemon, reactor = started(ECHO)
    calls: list[bool] = []
    daemon.reload = lambda: calls.append(True)  # type: ignore[assignment,method-assign,func-returns-value]
    response = request(reactor.site(), method, path, headers={"Origin": origin}, body=body)
    assert response.code == 403
    assert response.json()["error"] == "forbidden"
    assert calls == []
    assert refusals(reactor)["origin"] == 1


def test_ownOriginMayChangeAndForeignOriginMayRead() -> None:
    """
    A change whose Origin is the API's own is answered; a read from another origin is (the browser keeps its answer from the page).
    """
    daemon, reactor = started(ECHO)
    site = reactor.site()
    assert request(site, "DELETE", "/services/echo/events", headers={"Origin": "http://127.0.0.1:8053"}).code == 200
    assert request(site, "GET", "/services", headers={"Origin": "http://evil.example"}).code == 200


# Content-Type.


@pytest.mark.parametrize(
    "contentType",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/jsonx"],
)
def test_bodyMustBeJSON(contentType: str | None) -> None:
    """
    A body sent as anything but application/json (what a plain HTML form can send) answers 415, and the table is not changed.
    """
    daemon, reactor = started(DNS)
    site = reactor.site()
    body = json.dumps({"records": {"evil.com": {"A": ["192.0.2.66"]}}}).encode()
    response = request(site, "PUT", "/services/dns/records", headers={"Content-Type": contentType}, body=body)  # type: ignore[dict-item]
    assert response.code == 415
    assert response.json()["error"] == "unsupported media type"
    assert "evil.com" not in json.dumps(request(site, "GET", "/services/dns/records").json())
    assert refusals(reactor)["content_type"] == 1


def test_jsonWithCharsetIsTaken() -> None:
    """
    application/json with parameters (a charset) is JSON.
    """
    daemon, reactor = started(ECHO)
    response = request(
        reactor.site(),
        "PUT",
        "/services/echo/faults",
        headers={"Content-Type": "Application/JSON; charset=utf-8"},
        body=b'{"faults": []}',
    )
    assert response.code == 200


# The token netd makes.


def test_generatedTokenGuardsChanges() -> None:
    """
    Without admin_token_file a TCP API makes a token in the state directory (mode 0600, path logged and reported); changes need it, reads do not.
    """
    with capturedLogs() as events:
        daemon, reactor = started(ECHO)
    site = reactor.site()
    path = os.path.join(os.environ["XDG_STATE_HOME"], "netd", "admin.token")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Path(path).read_text().strip() == token(reactor)
    assert len(token(reactor)) >= 43
    assert any(e.get("token_file") == path for e in events)
    api = applicationOf(daemon).api
    described = api.describe() if api is not None else None
    assert described is not None and described["token_file"] == path
    refused = request(site, "POST", "/reload", token=False)
    assert refused.code == 401
    assert path in refused.json()["message"]
    assert request(site, "DELETE", "/services/echo/events", token=False).code == 401
    assert request(site, "POST", "/reload", headers=bearer("wrong")).code == 401
    assert request(site, "GET", "/services").code == 200
    assert request(site, "GET", "/metrics").code == 200
    assert request(site, "DELETE", "/services/echo/events").code == 200


def test_generatedTokenIsKeptAcrossStarts(tmp_path: Path) -> None:
    """
    A second start reuses a good token file; one that is too open or empty is replaced by a new token, mode 0600.
    """
    first, firstReactor = started(ECHO, state_dir=str(tmp_path))
    second, secondReactor = started(ECHO, state_dir=str(tmp_path))
    assert token(firstReactor) == token(secondReactor)
    path = tmp_path / "admin.token"
    path.chmod(0o644)
    third, thirdReactor = started(ECHO, state_dir=str(tmp_path))
    assert token(thirdReactor) != token(firstReactor)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_tokenOffWithFalse() -> None:
    """
    admin_token_file = false turns the generated token off: changes from loopback need none.
    """
    daemon, reactor = started(ECHO, admin_token_file=False)
    site = reactor.site()
    assert isinstance(site, AdminSite) and site.guard.access.token is None
    assert request(reactor.site(), "DELETE", "/services/echo/events").code == 200


def test_tokenFalseNeedsLoopback() -> None:
    """
    admin_token_file = false on an address other hosts reach is a config error.
    """
    with pytest.raises(ConfigError, match="needs a token"):
        makeConfig(ECHO, admin="tcp:0:interface=0.0.0.0", admin_token_file=False)


def test_configuredTokenGuardsChangesToo(tmp_path: Path) -> None:
    """
    With admin_token_file, a change needs the token whatever the path: POST to /health is 401 without it, 405 with it.
    """
    daemon, reactor = started(ECHO, admin_token_file=str(tokenFile(tmp_path)))
    site = reactor.site()
    assert request(site, "POST", "/health").code == 401
    assert request(site, "POST", "/health", headers=bearer(TOKEN)).code == 405
    assert request(site, "GET", "/health").code == 200


# The token file (item 18).


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o660])
def test_tokenFileOpenToOthersStopsTheStart(tmp_path: Path, mode: int) -> None:
    """
    A token file its group or others may read or change stops the start with an error naming [daemon] admin_token_file and the mode; nothing listens.
    """
    reactor = Reactor()
    application = NetdApplication(makeConfig(ECHO, admin_token_file=str(tokenFile(tmp_path, mode=mode))), reactor)
    with pytest.raises(ServiceStartError, match=rf"\[daemon\] admin_token_file: .* \(mode {mode:04o}\)"):
        resultOf(Deferred.fromCoroutine(application.start()))
    assert reactor.tcpPorts == []


def test_longTokenIsAnErrorNotCut(tmp_path: Path) -> None:
    """
    A token of 4096 bytes is taken whole; one byte more is an error, never silently cut.
    """
    assert readToken(str(tokenFile(tmp_path, "x" * MAX_TOKEN + "\n"))) == b"x" * MAX_TOKEN
    with pytest.raises(TokenFileError, match="more than 4096 bytes"):
        readToken(str(tokenFile(tmp_path, "x" * (MAX_TOKEN + 1))))


def test_tokenWithControlCharactersIsAnError(tmp_path: Path) -> None:
    """
    A token an HTTP header cannot carry (control characters, non-ASCII) is an error.
    """
    for text in ("two\nlines", "tab\tinside", "caf\u00e9"):
        with pytest.raises(TokenFileError, match="printable ASCII"):
            readToken(str(tokenFile(tmp_path, text)))


def test_reloadReadsTheTokenFileAgain(tmp_path: Path) -> None:
    """
    A reload reads the token file again: a new token takes effect; a broken file fails the reload with a config error naming the key, and the old token stays.
    """
    path = tokenFile(tmp_path)
    daemon, reactor, _ = reloadable(tmp_path, f'admin_token_file = "{path}"')
    site = reactor.site()
    path.write_text("new-token")
    resultOf(Deferred.fromCoroutine(daemon.reload()))
    assert request(site, "GET", "/services", headers=bearer("new-token")).code == 200
    assert request(site, "GET", "/services", headers=bearer(TOKEN)).code == 401
    path.chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        resultOf(Deferred.fromCoroutine(daemon.reload()))
    assert "daemon.admin_token_file" in str(caught.value)
    assert request(site, "GET", "/services", headers=bearer("new-token")).code == 200


# Refused before the body is read (item 3).


def rawSend(site: AdminSite, head: bytes) -> tuple[Any, StringTransport]:
    """
    Connect to C{site} and send C{head} (request line and headers); the protocol and transport.
    """
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    assert protocol is not None
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
    protocol.makeConnection(transport)
    protocol.dataReceived(head)
    return protocol, transport


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        pytest.param(b"Host: attacker.example\r\nContent-Type: application/json\r\n", 421, id="host"),
        pytest.param(b"Host: localhost\r\nContent-Type: application/json\r\n", 401, id="no-token"),
        pytest.param(b"Host: localhost\r\nContent-Type: text/plain\r\nAuthorization: Bearer TOKEN\r\n", 415, id="text"),
        pytest.param(
            b"Host: localhost\r\nOrigin: http://evil.example\r\nContent-Type: application/json\r\n", 403, id="origin"
        ),
    ],
)
def test_refusedFromTheHeadersBeforeTheBody(headers: bytes, code: int) -> None:
    """
    A request announcing a 100 MB body that may not be sent is answered as soon as its headers are in (never with "100 Continue", which would invite the body), the connection closes, and whatever body follows is never buffered.
    """
    daemon, reactor = started(ECHO)
    site = reactor.site()
    assert isinstance(site, AdminSite)
    headers = headers.replace(b"TOKEN", token(reactor).encode())
    head = (
        b"PUT /services/echo/faults HTTP/1.1\r\n"
        + headers
        + b"Expect: 100-continue\r\nContent-Length: 100000000\r\n\r\n"
    )
    protocol, transport = rawSend(site, head)
    answer = transport.value()
    assert answer.startswith(f"HTTP/1.1 {code} ".encode()), answer
    assert b"100 Continue" not in answer
    assert b"Connection: close" in answer
    assert transport.disconnecting
    request_ = protocol.requests[-1]
    protocol.dataReceived(b"x" * 65536)
    assert request_.content is None
    assert transport.value() == answer


def test_chunkedBodyIs411() -> None:
    """
    A chunked body, even authorized, answers 411 before any of it is read.
    """
    daemon, reactor = started(ECHO)
    head = (
        b"PUT /services/echo/faults HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + token(reactor).encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    protocol, transport = rawSend(reactor.site(), head)  # type: ignore[arg-type]
    assert transport.value().startswith(b"HTTP/1.1 411 ")
    assert refusals(reactor)["chunked"] == 1


def test_overSizeBodyIs413() -> None:
    """
    An authorized body over 1 MiB answers 413 before any of it is read.
    """
    daemon, reactor = started(ECHO)
    head = (
        b"PUT /services/echo/faults HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer "
        + token(reactor).encode()
        + b"\r\nContent-Length: "
        + str(MAX_TABLE_BODY + 1).encode()
        + b"\r\n\r\n"
    )
    protocol, transport = rawSend(reactor.site(), head)  # type: ignore[arg-type]
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert refusals(reactor)["too_large"] == 1


def test_bodyIsKeptInMemory() -> None:
    """
    An accepted body larger than Twisted's spooling threshold (100 kB) is kept in memory, never in a temporary file.
    """
    daemon, reactor = started(ECHO)
    body = b'{"faults": []' + b" " * 200_000 + b"}"
    exchange = send(reactor.site(), "PUT", "/services/echo/faults", body=body)
    assert exchange.response().code == 200


# The connection cap.


def test_oldestIdleConnectionMakesRoomAtTheCap() -> None:
    """
    At admin_max_connections, a new connection closes the oldest one not being answered (idle or still sending its request), counted, and is served: whoever opened connections first cannot lock the API out.
    """
    daemon, reactor = started(ECHO, admin_max_connections=2)
    site = reactor.site()
    assert isinstance(site, AdminSite)
    (_, oldest), (_, younger) = rawSend(site, b""), rawSend(site, b"GET /health HTTP/1.1\r\nHost: local")
    assert request(site, "GET", "/health").code == 200
    assert oldest.disconnecting and not younger.disconnecting
    assert samples(metrics(reactor))[key("netd_admin_connections_evicted_total")] == 1
    assert site.openConnections == 2


def test_connectionPastTheCapIs503WhileAllAreAnswered() -> None:
    """
    When every open connection is being answered (a slow reload), a new one is answered 503 and closed, and counted; once the answer is sent, a new one is served.
    """
    daemon, reactor = started(ECHO, admin_max_connections=1)
    pending: Deferred[None] = Deferred()

    async def reload() -> None:
        await pending

    daemon.reload = reload  # type: ignore[method-assign]
    site = reactor.site()
    assert isinstance(site, AdminSite)
    slow = send(site, "POST", "/reload", headers={"Connection": "keep-alive"})
    _, refused = rawSend(site, b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert refused.value().startswith(b"HTTP/1.1 503 ")
    assert refused.disconnecting
    assert samples(metrics(reactor))[key("netd_admin_connections_refused_total")] == 1
    pending.callback(None)
    assert slow.response().code == 200
    assert request(site, "GET", "/health").code == 200


def test_defaultConnectionCap() -> None:
    """
    The control API takes 64 connections at once unless admin_max_connections says otherwise.
    """
    daemon, reactor = started(ECHO)
    assert reactor.site().maxConnections == 64  # type: ignore[attr-defined]


# The unix socket.


@pytest_twisted.ensureDeferred
async def test_unixSocketIsOwnerOnly(tmp_path: Path) -> None:
    """
    A unix: control API's socket is mode 0600 (0666 before), and needs no token.
    """
    from twisted.internet import reactor as realReactor

    path = tmp_path / "admin.sock"
    application = NetdApplication(makeConfig(ECHO, admin=f"unix:{path}"), realReactor)
    application.build()
    api = application.api
    assert api is not None
    await api.listen()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert api.guard.access.token is None
    finally:
        await api.stopListening()


@pytest_twisted.ensureDeferred
async def test_unixSocketWithGroupIs0660(tmp_path: Path) -> None:
    """
    With admin_group, the socket is mode 0660 and belongs to that group.
    """
    from twisted.internet import reactor as realReactor

    path = tmp_path / "admin.sock"
    gid = os.getgroups()[0] if os.getgroups() else os.getgid()
    application = NetdApplication(makeConfig(ECHO, admin=f"unix:{path}", admin_group=gid), realReactor)
    application.build()
    api = application.api
    assert api is not None
    await api.listen()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        assert path.stat().st_gid == gid
    finally:
        await api.stopListening()


def test_adminGroupNeedsUnix() -> None:
    """
    admin_group with a TCP control API is a config error naming the key.
    """
    with pytest.raises(ConfigError, match="daemon.admin_group: only a unix: control API"):
        makeConfig(ECHO, admin_group=0)


def reloadable(tmp_path: Path, daemonKeys: str) -> tuple[Daemon, Reactor, Path]:
    """
    A started daemon whose reloads read a config file with C{daemonKeys} in its [daemon] table; the file's path.
    """
    from netd.config.spec import loadConfig
    from netd.registry import discoverPlugins

    config = tmp_path / "netd.toml"
    config.write_text(
        f'[daemon]\nadmin = "tcp:0:interface=127.0.0.1"\n{daemonKeys}\n\n'
        '[[services]]\nname = "echo"\nplugin = "echo"\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
    )
    reactor = Reactor()
    application = NetdApplication(loadConfig(str(config), discoverPlugins()), reactor)
    resultOf(Deferred.fromCoroutine(application.start()))
    return application.daemon, reactor, config


def test_reloadAppliesAdminHostsAndKeepsTheGeneratedToken(tmp_path: Path) -> None:
    """
    A reload applies a new admin_hosts at once and keeps the token netd made.
    """
    daemon, reactor, config = reloadable(tmp_path, "")
    before = token(reactor)
    assert request(reactor.site(), "GET", "/services", headers={"Host": "netd.internal"}).code == 421
    config.write_text(config.read_text().replace("[daemon]\n", '[daemon]\nadmin_hosts = ["netd.internal"]\n'))
    resultOf(Deferred.fromCoroutine(daemon.reload()))
    assert request(reactor.site(), "GET", "/services", headers={"Host": "netd.internal"}).code == 200
    assert token(reactor) == before


def test_reloadKeepsATokenThisUserMayNotRead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    After the privilege drop, a token file readable by root only cannot be read again: the reload goes on with the token read at start, and says so.
    """
    import netd.daemon.api.server

    daemon, reactor, config = reloadable(tmp_path, f'admin_token_file = "{tokenFile(tmp_path)}"')

    def denied(path: str) -> bytes:
        raise TokenFileError(f"cannot read {path!r}: Permission denied") from PermissionError(13, "Permission denied")

    monkeypatch.setattr(netd.daemon.api.server, "readToken", denied)
    monkeypatch.setattr(os, "geteuid", lambda: 65534)
    with capturedLogs() as events:
        resultOf(Deferred.fromCoroutine(daemon.reload()))
    assert request(reactor.site(), "GET", "/services", headers=bearer(TOKEN)).code == 200
    assert any("token read at start" in e.get("log_format", "") for e in events)


def test_unwritableStateDirStopsTheStartSayingWhatToDo(tmp_path: Path) -> None:
    """
    When the token cannot be written into the state directory, the start fails naming the file and the keys that fix it.
    """
    blocker = tmp_path / "file"
    blocker.write_text("")
    reactor = Reactor()
    application = NetdApplication(makeConfig(ECHO, state_dir=str(blocker / "state")), reactor)
    with pytest.raises(
        ServiceStartError, match=r"admin_token_file: unset, so netd makes a token in .*admin_token_file = false"
    ):
        resultOf(Deferred.fromCoroutine(application.start()))
    assert reactor.tcpPorts == []


def test_wildcardBindIsNoHostButAdminHostsAddressesAre(tmp_path: Path) -> None:
    """
    Bound to 0.0.0.0 (with a token file), the API does not answer to Host 0.0.0.0, but answers to an address listed in admin_hosts (IPv4 or bracketed IPv6).
    """
    daemon, reactor = started(
        ECHO,
        admin="tcp:0:interface=0.0.0.0",
        admin_token_file=str(tokenFile(tmp_path)),
        admin_hosts=["192.0.2.5", "2001:db8::5"],
    )
    site = reactor.site()
    headers = bearer(TOKEN)
    assert request(site, "GET", "/services", headers={**headers, "Host": "0.0.0.0:8053"}).code == 421
    assert request(site, "GET", "/services", headers={**headers, "Host": "192.0.2.5:8053"}).code == 200
    assert request(site, "GET", "/services", headers={**headers, "Host": "[2001:db8::5]:8053"}).code == 200
