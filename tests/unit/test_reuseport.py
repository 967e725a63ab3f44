"""
C{reuseport=yes} on listen strings (L{netd.reactors.reuseport}): which strings
take it, the socket handed to the reactor, the error of a port another
process holds, and C{netd run --admin}, which gives each of several netds run
from one config its own control API, across reloads too.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import capturedLogs

from netd.config.listen import ListenAddress, whyListenFailed, withoutReusePort
from netd.config.options import InvalidValue
from netd.config.spec import AdminAddress, loadConfig
from netd.daemon.application import NetdApplication
from netd.daemon.cli import main
from netd.daemon.daemon import withDaemonOverrides
from netd.reactors.reuseport import sharedSocket
from netd.registry import discoverPlugins
from netd.stream.proxyheader import ProxyHeaderFactory
from netd.testing.memory import UDPMemoryReactorClock, resultOf

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "shared"),
    [
        ("tcp:7007:interface=127.0.0.1:reuseport=yes", True),
        ("tcp:7007:reuseport=yes:interface=127.0.0.1", True),
        ("tcp6:7007:interface=\\:\\:1:reuseport=yes", True),
        ("udp:7007:interface=127.0.0.1:reuseport=yes", True),
        ("udp:7007:reuseport=yes:interface=::1", True),
        ("udp:7007:interface=::1:reuseport=yes", True),
        ("haproxy:tcp:7007:interface=127.0.0.1:reuseport=yes", True),
        ("tcp:7007:interface=127.0.0.1:reuseport=no", False),
        ("udp:7007:reuseport=no", False),
        ("tcp:7007:interface=127.0.0.1", False),
    ],
)
def test_reusePortAccepted(text: str, shared: bool) -> None:
    """
    reuseport=yes or no is accepted on tcp:, tcp6: and udp: (anywhere among their arguments) and inside haproxy:.
    """
    address = ListenAddress.fromConfig(text)
    assert address.reusePort is shared
    assert address.toConfig() == text


def test_udpInterfaceBesideReusePort() -> None:
    """
    An unescaped IPv6 interface of a udp: string stays whole beside reuseport=yes.
    """
    address = ListenAddress.fromConfig("udp:53:interface=::1:reuseport=yes")
    assert (address.port, address.interface, address.reusePort) == (53, "::1", True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:/run/netd.sock:reuseport=yes", "applies to tcp:, tcp6: and udp: listen strings, not unix:"),
        ("haproxy:unix:/run/netd.sock:reuseport=yes", "applies to tcp:, tcp6: and udp: listen strings, not unix:"),
        ("systemd:domain=INET:index=0:reuseport=yes", "set ReusePort=yes in its .socket unit"),
        ("tcp:7007:reuseport=1", "reuseport='1'; expected reuseport=yes or reuseport=no"),
        ("udp:7007:reuseport=true", "reuseport='true'; expected reuseport=yes or reuseport=no"),
        ("udp:7007:reuse=yes", "expected udp:PORT[:interface=ADDR][:reuseport=yes]"),
    ],
)
def test_reusePortRefused(text: str, expected: str) -> None:
    """
    reuseport= elsewhere than tcp:, tcp6: and udp:, or with another value than yes or no, is refused saying what is allowed.
    """
    with pytest.raises(InvalidValue) as caught:
        ListenAddress.fromConfig(text)
    assert expected in str(caught.value)


def test_withoutReusePort() -> None:
    """
    The string Twisted's parser gets has the reuseport= argument taken out and every other one, escapes included, as written.
    """
    assert withoutReusePort("tcp6:7007:reuseport=yes:interface=\\:\\:1") == "tcp6:7007:interface=\\:\\:1"


class AdoptingReactor:
    """
    A reactor that records what each socket handed to C{adoptStreamPort} or
    C{adoptDatagramPort} is, at that moment (the caller closes its own).
    """

    def __init__(self) -> None:
        self.adopted: list[dict[str, Any]] = []

    def _record(self, fileDescriptor: int, family: int, served: object) -> object:
        with socket.socket(fileno=os.dup(fileDescriptor)) as copy:
            self.adopted.append(
                {
                    "family": family,
                    "type": copy.type,
                    "reuseport": copy.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT),
                    "listening": copy.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN),
                    "blocking": not fcntl.fcntl(fileDescriptor, fcntl.F_GETFL) & os.O_NONBLOCK,
                    "address": copy.getsockname()[:2],
                    "served": served,
                }
            )
        return object()

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: int, factory: object) -> object:
        return self._record(fileDescriptor, addressFamily, factory)

    def adoptDatagramPort(
        self, fileDescriptor: int, addressFamily: int, protocol: object, maxPacketSize: int = 8192
    ) -> object:
        return self._record(fileDescriptor, addressFamily, protocol)


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 free a moment ago.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_streamSocketHandedToTheReactor() -> None:
    """
    A tcp: string with reuseport=yes listens on a socket netd binds with SO_REUSEPORT and the reactor adopts, with the factory.
    """
    reactor = AdoptingReactor()
    factory = Factory.forProtocol(Protocol)
    port = freePort()
    address = ListenAddress.fromConfig(f"tcp:{port}:interface=127.0.0.1:reuseport=yes")
    resultOf(Deferred.fromCoroutine(address.listenStream(reactor, factory)))
    [adopted] = reactor.adopted
    assert adopted == {
        "family": socket.AF_INET,
        "type": socket.SOCK_STREAM,
        "reuseport": 1,
        "listening": 1,
        "blocking": False,
        "address": ("127.0.0.1", port),
        "served": factory,
    }


def test_proxiedIPv6StreamSocket() -> None:
    """
    Inside haproxy:, a tcp6: string with reuseport=yes gives the reactor an IPv6 socket served through the PROXY header's factory.
    """
    reactor = AdoptingReactor()
    address = ListenAddress.fromConfig("haproxy:tcp6:0:interface=\\:\\:1:reuseport=yes")
    resultOf(Deferred.fromCoroutine(address.listenStream(reactor, Factory.forProtocol(Protocol))))
    [adopted] = reactor.adopted
    assert adopted["family"] == socket.AF_INET6 and adopted["address"][0] == "::1"
    assert adopted["reuseport"] == 1 and isinstance(adopted["served"], ProxyHeaderFactory)


def test_datagramSocketHandedToTheReactor() -> None:
    """
    A udp: string with reuseport=yes binds a UDP socket with SO_REUSEPORT, which a reactor other than netd's adopts as its own port.
    """
    reactor = AdoptingReactor()
    protocol = DatagramProtocol()
    address = ListenAddress.fromConfig("udp:0:interface=127.0.0.1:reuseport=yes")
    address.listenDatagram(reactor, protocol)
    [adopted] = reactor.adopted
    assert (adopted["type"], adopted["reuseport"], adopted["served"]) == (socket.SOCK_DGRAM, 1, protocol)


@pytest.fixture
def plainHolder() -> Iterator[socket.socket]:
    """
    A TCP socket listening on 127.0.0.1 without SO_REUSEPORT.
    """
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
def test_sharedSocketsShareAPort(kind: int) -> None:
    """
    Two shared sockets of one user bind the same port; a socket without the option then cannot.
    """
    with sharedSocket(kind, "127.0.0.1", 0) as first:
        port = first.getsockname()[1]
        with sharedSocket(kind, "127.0.0.1", port) as second, socket.socket(socket.AF_INET, kind) as plain:
            assert second.getsockname() == first.getsockname()
            with pytest.raises(OSError) as caught:
                plain.bind(("127.0.0.1", port))
            assert caught.value.errno == errno.EADDRINUSE


def test_sharedSocketOnAPortHeldAlone(plainHolder: socket.socket) -> None:
    """
    A shared socket on a port held by a socket without the option fails as Twisted's ports do, with CannotListenError.
    """
    port = plainHolder.getsockname()[1]
    with pytest.raises(CannotListenError) as caught:
        sharedSocket(socket.SOCK_STREAM, "127.0.0.1", port)
    assert (caught.value.interface, caught.value.port) == ("127.0.0.1", port)
    assert caught.value.socketError.errno == errno.EADDRINUSE


def inUse(port: int) -> CannotListenError:
    """
    The error of a bind to 127.0.0.1:C{port} that another socket holds.
    """
    return CannotListenError("127.0.0.1", port, OSError(errno.EADDRINUSE, "Address already in use"))


def test_portInUseSuggestsSharing() -> None:
    """
    A service's port in use without reuseport=yes: the error says that adding it shares the port between netds.
    """
    address = ListenAddress.fromConfig("udp:7007:interface=127.0.0.1")
    why = whyListenFailed("services[0].listen[0]", address, inUse(7007), shareable=True)
    assert why.startswith("address already in use: another process (another netd?) holds udp 127.0.0.1:7007")
    assert why.endswith(
        "to share the port between netds started from one config, add reuseport=yes to this listen string"
    )


def test_portInUseDespiteSharing() -> None:
    """
    A port in use although reuseport=yes was set: the error says the holder did not set it or is another user.
    """
    address = ListenAddress.fromConfig("haproxy:tcp:7007:interface=127.0.0.1:reuseport=yes")
    why = whyListenFailed("services[0].listen[0]", address, inUse(7007), shareable=True)
    assert why.endswith("it was listened on with reuseport=yes, so the holder did not set it or runs as another user")


def test_controlAPIInUseSuggestsNoSharing() -> None:
    """
    An address netds may not share (the control API's) in use: the error does not suggest reuseport=yes.
    """
    address = ListenAddress.fromConfig("tcp:8053:interface=127.0.0.1")
    assert "reuseport" not in whyListenFailed("[daemon] admin", address, inUse(8053))


@pytest.mark.parametrize(
    ("admin", "expected"),
    [
        ("udp:8061", "netd run --admin: 'udp:8061': the control API is HTTP, which needs a stream address"),
        ("tcp:8061", "netd run --admin: 'tcp:8061' can be reached from other hosts, so the control API needs a token"),
        (
            "tcp:8061:interface=127.0.0.1:reuseport=yes",
            "netd run --admin: 'tcp:8061:interface=127.0.0.1:reuseport=yes': an API answers for one netd, so it "
            "cannot share its port (reuseport=yes)",
        ),
    ],
)
def test_adminOptionRefused(tmp_path: Path, capsys: pytest.CaptureFixture[str], admin: str, expected: str) -> None:
    """
    netd run --admin refuses, before anything starts, an address that [daemon] admin would refuse.
    """
    config = tmp_path / "netd.toml"
    config.write_text('[[services]]\nname = "echo"\nplugin = "echo"\nlisten = ["tcp:0:interface=127.0.0.1"]\n')
    assert main(["run", "-c", str(config), "--admin", admin]) == 1
    assert capsys.readouterr().err.startswith(expected)


def test_adminOverrideKeptByReloads(tmp_path: Path) -> None:
    """
    A [daemon] key given on the command line stays through a reload, which does not report it as a change to restart for.
    """
    path = tmp_path / "netd.toml"
    path.write_text(
        f'[daemon]\nadmin = "tcp:8053:interface=127.0.0.1"\nstate_dir = "{tmp_path}"\n'
        '[[services]]\nname = "echo"\nplugin = "echo"\nlisten = ["tcp:7001:interface=127.0.0.1:reuseport=yes"]\n'
    )
    overrides = {"admin": AdminAddress.fromConfig("tcp:8061:interface=127.0.0.1")}
    config = withDaemonOverrides(loadConfig(str(path), discoverPlugins()), overrides)
    application = NetdApplication(config, UDPMemoryReactorClock(), daemonOverrides=overrides)
    resultOf(Deferred.fromCoroutine(application.start()))
    daemon = application.daemon
    with capturedLogs() as events:
        resultOf(Deferred.fromCoroutine(daemon.reload()))
    assert daemon.config.daemon.admin == overrides["admin"]
    assert not [event for event in events if "takes effect only when netd restarts" in event["log_format"]]


def test_templateUnitGivesEachInstanceItsOwn() -> None:
    """
    config/netd@.service gives each instance a control API on 127.0.0.1 at the port its name is, a state directory of its own, and one user for all (which SO_REUSEPORT needs).
    """
    unit = (ROOT / "config" / "netd@.service").read_text()
    lines = unit.splitlines()
    [start] = [line for line in lines if line.startswith("ExecStart=")]
    admin = start.split("--admin ", 1)[1].replace("%i", "8061")
    assert AdminAddress.fromConfig(admin).localOnly
    assert "StateDirectory=netd/%i" in lines and "User=netd" in lines and "DynamicUser=yes" in lines
    assert "ExecReload=/bin/kill -HUP $MAINPID" in lines
    assert "PartOf=netd.target" in lines and "WantedBy=netd.target" in lines
    assert "WantedBy=multi-user.target" in (ROOT / "config" / "netd.target").read_text().splitlines()
