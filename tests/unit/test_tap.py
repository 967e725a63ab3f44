"""
The twistd drop-in: Twisted's plugin loader finds C{netd} in
C{twisted/plugins/netd_plugin.py}, its options are those of C{netd run}, and
its service binds in C{privilegedStartService} (before twistd's C{--uid}
switch) and serves once the reactor runs.
"""

from __future__ import annotations

import ast
import importlib
import json
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import Application, IServiceMaker
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, LogLevel, capturedLogs
from twisted.plugin import getPlugins
from twisted.python import usage

from netd.daemon.application import NetdApplication
from netd.daemon.tap import Options, makeService
from netd.testing.memory import UDPMemoryReactorClock, resultOf

from .test_service import UDPBindFailsReactor, makeConfig
from .test_systemd import RecordingNotifier

ROOT = Path(__file__).resolve().parents[2]
DROP_IN = ROOT / "twisted" / "plugins" / "netd_plugin.py"
ECHO = {"name": "echo", "plugin": "echo", "listen": ["tcp:0:interface=127.0.0.1", "udp:0:interface=127.0.0.1"]}
GOOD = '[daemon]\nadmin = false\n\n[[services]]\nname = "e"\nplugin = "echo"\nlisten = ["tcp:0"]\n'


def test_dropInFoundByTwisted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Twisted's plugin loader, given a plugin package holding the drop-in, finds an IServiceMaker named netd whose module is netd.daemon.tap.
    """
    package = tmp_path / "netd_test_dropins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    shutil.copy(DROP_IN, package)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("netd_test_dropins")
    makers = [m for m in getPlugins(IServiceMaker, module) if m.tapname == "netd"]
    monkeypatch.delitem(sys.modules, "netd_test_dropins")
    monkeypatch.delitem(sys.modules, "netd_test_dropins.netd_plugin", raising=False)
    assert len(makers) == 1
    assert makers[0].options is Options
    assert makers[0].makeService is makeService


def test_dropInIsShippedWithoutPackageFiles() -> None:
    """
    twisted/plugins has the drop-in and no __init__.py (the package is Twisted's), and setuptools is told to ship it.
    """
    assert DROP_IN.exists()
    assert not (ROOT / "twisted" / "__init__.py").exists()
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "twisted.plugins" in pyproject["tool"]["setuptools"]["packages"]


def test_optionsLoadTheConfig(tmp_path: Path) -> None:
    """
    -c and --ports-file parse as under netd run, and the config is loaded and validated while the options are.
    """
    config = tmp_path / "netd.toml"
    config.write_text(GOOD)
    options = Options()
    options.parseOptions(["-c", str(config), "--ports-file", str(tmp_path / "ports.json")])
    assert options["netdConfig"].services[0].name == "e"
    assert options["ports-file"] == str(tmp_path / "ports.json")
    assert isinstance(makeService(options), NetdApplication)


def test_badConfigIsAUsageError(tmp_path: Path) -> None:
    """
    An invalid config is refused as a usage error that lists every problem, before twistd starts anything.
    """
    config = tmp_path / "netd.toml"
    config.write_text(GOOD.replace('"echo"', '"ecko"'))
    with pytest.raises(usage.UsageError) as info:
        Options().parseOptions(["-c", str(config)])
    assert "services[0].plugin: unknown plugin 'ecko'" in str(info.value)
    assert "1 problem found; nothing was started." in str(info.value)


def test_adminReplacesTheConfigsAndReloadsKeepIt(tmp_path: Path) -> None:
    """
    --admin is netd run's: the control API's address in place of the config's [daemon] admin, kept by reloads.
    """
    config = tmp_path / "netd.toml"
    config.write_text(GOOD)
    options = Options()
    options.parseOptions(["-c", str(config), "--admin", "unix:" + str(tmp_path / "admin.sock")])
    assert options["netdConfig"].daemon.admin.address.text == "unix:" + str(tmp_path / "admin.sock")
    service = makeService(options)
    assert isinstance(service, NetdApplication)
    assert service.daemonOverrides == {"admin": options["netdConfig"].daemon.admin}


@pytest.mark.parametrize(
    ("admin", "problem"),
    [
        ("udp:8061", "twistd netd --admin: 'udp:8061': the control API is HTTP, which needs a stream address"),
        ("tcp:8061", "twistd netd --admin: 'tcp:8061' can be reached from other hosts, so the control API needs"),
    ],
)
def test_badAdminIsAUsageError(tmp_path: Path, admin: str, problem: str) -> None:
    """
    An --admin that netd run would refuse (a datagram address; TCP reachable by other hosts without a token file) is
    a usage error saying why.
    """
    config = tmp_path / "netd.toml"
    config.write_text(GOOD)
    with pytest.raises(usage.UsageError) as info:
        Options().parseOptions(["-c", str(config), "--admin", admin])
    assert problem in str(info.value)


def application(reactor: Any, tmp_path: Path) -> tuple[NetdApplication, RecordingNotifier]:
    """
    The twistd service of an echo config on C{reactor}, with a recording notifier.
    """
    notifier = RecordingNotifier(tmp_path / "ports.json")
    return NetdApplication(makeConfig(ECHO), reactor, notifier, portsFile=str(tmp_path / "ports.json")), notifier


def test_bindsPrivilegedThenServesWhenRunning(tmp_path: Path) -> None:
    """
    privilegedStartService binds every address; the ports file and READY=1 wait until the reactor runs; stopping closes the listeners and says STOPPING=1.
    """
    reactor = UDPMemoryReactorClock()
    app, notifier = application(reactor, tmp_path)
    app.privilegedStartService()
    assert len(reactor.tcpPorts) == 1 and len(reactor.udpPorts) == 1
    app.startService()
    assert not (tmp_path / "ports.json").exists()
    reactor.run()
    report = json.loads((tmp_path / "ports.json").read_text())
    assert [bound["transport"] for bound in report["services"]["echo"]] == ["tcp", "udp"]
    assert notifier.sent[-1][0][0] == ("READY", "1") and notifier.sent[-1][1]
    resultOf(app.stopService())
    assert notifier.sent[-1][0][0] == ("STOPPING", "1")
    assert [p.listening for p in reactor.tcpPorts] == [False]


def test_bindFailureExits(tmp_path: Path) -> None:
    """
    An address that cannot be bound is logged as critical and exits 1, leaving nothing listening.
    """
    reactor = UDPBindFailsReactor()
    app, notifier = application(reactor, tmp_path)
    with capturedLogs() as events, pytest.raises(SystemExit) as info:
        app.privilegedStartService()
    assert info.value.code == 1
    [critical] = [e for e in events if e["log_level"] == LogLevel.critical]
    assert "cannot listen on 'udp:0:interface=127.0.0.1'" in critical["error"]
    assert reactor.tcpPorts and not any(p.listening for p in reactor.tcpPorts)
    assert notifier.sent[-1][0][0][1].startswith("cannot start: ")


def slowBinding(app: NetdApplication, monkeypatch: pytest.MonkeyPatch) -> Deferred[None]:
    """
    Make the services of C{app} finish listening only when the returned Deferred fires.
    """
    bound: Deferred[None] = Deferred()
    app.build()
    listen = app.daemon.listen

    async def later() -> None:
        await bound
        await listen()

    monkeypatch.setattr(app.daemon, "listen", later)
    return bound


def test_bindingThatFinishesLaterIsServedOnceDone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A bind still under way when privilegedStartService returns is awaited: netd serves (ports file, READY=1) once it is done.
    """
    reactor = UDPMemoryReactorClock()
    app, notifier = application(reactor, tmp_path)
    bound = slowBinding(app, monkeypatch)
    app.privilegedStartService()
    app.startService()
    reactor.run()
    serving = app.whenServing()
    assert not serving.called and not (tmp_path / "ports.json").exists()
    bound.callback(None)
    resultOf(serving)
    assert json.loads((tmp_path / "ports.json").read_text())["services"]["echo"]
    assert notifier.sent[-1][0][0] == ("READY", "1")
    resultOf(app.stopService())


def test_bindingThatFailsLaterExits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A bind that fails after the reactor began to run is logged as critical, stops the reactor, and fails whenServing with exit status 1.
    """
    reactor = UDPBindFailsReactor()
    app, notifier = application(reactor, tmp_path)
    bound = slowBinding(app, monkeypatch)
    app.privilegedStartService()
    app.startService()
    reactor.run()
    serving = app.whenServing()
    with capturedLogs() as events:
        bound.callback(None)
    with pytest.raises(SystemExit) as info:
        resultOf(serving)
    assert info.value.code == 1
    assert any(e["log_level"] == LogLevel.critical for e in events)
    assert reactor.hasStopped
    assert not any(p.listening for p in reactor.tcpPorts)
    assert not (tmp_path / "ports.json").exists()


def test_twistdApplicationLogsInNetdsFormat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    makeService gives twistd's application netd's log observer (unless --logger or --syslog chose one) and has SIGHUP reload the config.
    """
    config = tmp_path / "netd.toml"
    config.write_text(GOOD)
    options = Options()
    options.parseOptions(["-c", str(config)])
    twistdOptions: dict[str, object] = {"nodaemon": True, "logfile": None, "logger": None, "syslog": False}
    monkeypatch.setattr(options, "parent", twistdOptions, raising=False)
    made = makeService(options)
    assert isinstance(made, NetdApplication) and made.reloadOnHangup
    twistdApplication = Application("netd")
    made.setServiceParent(twistdApplication)
    assert twistdApplication.getComponent(ILogObserver, None) is made.logObserver is not None
    twistdOptions["logger"] = lambda: None
    made = makeService(options)
    assert isinstance(made, NetdApplication) and made.logObserver is None


def test_daemonAndControlAPIDoNotImportEachOther() -> None:
    """
    netd.daemon.daemon imports nothing of netd.daemon.api, and no module of netd.daemon.api imports netd.daemon.daemon or the application: they meet only in netd.daemon.application.
    """
    folder = ROOT / "netd" / "daemon"

    def imported(path: Path) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module is not None:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        return names

    assert not {n for n in imported(folder / "daemon.py") if n.startswith("netd.daemon.api")}
    for path in (folder / "api").glob("*.py"):
        assert not imported(path) & {"netd.daemon.daemon", "netd.daemon.application"}, path


def test_serviceThatCannotBeBuiltExitsBeforeAnythingListens(tmp_path: Path) -> None:
    """
    A service whose TLS files cannot be read fails privilegedStartService as a bind failure does: logged as critical at its key path, exit 1, and not even the control API listens.
    """
    reactor = UDPMemoryReactorClock()
    missing = str(tmp_path / "nowhere.pem")
    config = makeConfig(
        {**ECHO, "tls": {"certificate": missing, "private_key": missing}},
        admin="tcp:0:interface=127.0.0.1",
        admin_token_file=False,
    )
    app = NetdApplication(config, reactor, RecordingNotifier())
    with capturedLogs() as events, pytest.raises(SystemExit) as info:
        app.privilegedStartService()
    assert info.value.code == 1
    [critical] = [e for e in events if e["log_level"] == LogLevel.critical]
    assert critical["key"] == "services[0].tls.certificate" and "nowhere.pem" in critical["error"]
    assert reactor.tcpPorts == [] and reactor.udpPorts == {}
