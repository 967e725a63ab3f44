"""
L{netd.daemon.watch.ConfigWatch} on a fake clock: the config file, published
as the kubelet publishes a ConfigMap volume (a timestamped folder, a
C{..data} symlink renamed over the old one), reloaded once per change of
content, a bad file tried once and changing nothing, a file missing for a
moment logged once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from twisted.internet.defer import Deferred
from twisted.logger import LogEvent, LogLevel, capturedLogs

from netd.config.options import ConfigError
from netd.config.spec import DEFAULT_CONFIG_NAME, loadConfig, parseConfig
from netd.daemon.application import NetdApplication
from netd.daemon.daemon import Daemon
from netd.daemon.watch import JITTER, ConfigWatch
from netd.registry import discoverPlugins
from netd.testing.memory import UDPMemoryReactorClock, resultOf

A = {"name": "a", "plugin": "echo", "listen": ["tcp:7001:interface=127.0.0.1"], "idle_timeout": 0}
B = {"name": "b", "plugin": "echo", "listen": ["tcp:7002:interface=127.0.0.1"], "idle_timeout": 0}
INTERVAL = 2.0


def configText(*services: dict[str, Any], **daemon: Any) -> str:
    """
    A config of C{services} (control API off) whose checks come every INTERVAL.
    """
    table = {"admin": False, "shutdown_timeout": 5, "watch_interval": INTERVAL, **daemon}
    return tomli_w.dumps({"daemon": table, "services": list(services)})


class ConfigMapVolume:
    """
    A folder written as the kubelet's atomic writer writes a ConfigMap
    volume: each version in a new C{..TIMESTAMP} folder, a C{..data_tmp}
    symlink to it renamed over C{..data}, the old folder then removed, and
    C{netd.toml} a symlink to C{..data/netd.toml}.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = 0
        self.path = root / "netd.toml"

    def publish(self, text: str) -> None:
        """
        Swap in a new version holding C{text} as C{netd.toml}.
        """
        self.versions += 1
        folder = self.root / f"..2026_12_07_12_00_{self.versions:02d}.000000001"
        folder.mkdir()
        (folder / "netd.toml").write_text(text)
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        os.symlink(folder.name, self.root / "..data_tmp")
        os.replace(self.root / "..data_tmp", data)
        if not self.path.is_symlink():
            os.symlink("..data/netd.toml", self.path)
        if old is not None:
            shutil.rmtree(self.root / old)


def started(volume: ConfigMapVolume, reactor: UDPMemoryReactorClock) -> tuple[Daemon, ConfigWatch]:
    """
    A daemon started on the volume's file and a watch of it, checking every
    INTERVAL exactly.
    """
    application = NetdApplication(loadConfig(str(volume.path), discoverPlugins()), reactor)
    resultOf(Deferred.fromCoroutine(application.start()))
    watch = ConfigWatch(application.daemon, str(volume.path), reactor, uniform=lambda low, high: 1.0)
    watch.start()
    return application.daemon, watch


def reloads(events: list[LogEvent]) -> int:
    """
    How many reloads began among the captured events.
    """
    return sum(1 for e in events if e.get("log_format") == "reloading the config from {source}")


def names(daemon: Daemon) -> list[str]:
    """
    The names of the daemon's running services, in config order.
    """
    return [s.spec.name for s in daemon.netServices()]


def test_symlinkSwapReloadsOnce(tmp_path: Path) -> None:
    """
    A kubelet-style symlink swap to a config that adds a service is reloaded at the next check, once, and not again on later checks.
    """
    volume = ConfigMapVolume(tmp_path)
    volume.publish(configText(A))
    reactor = UDPMemoryReactorClock()
    daemon, _ = started(volume, reactor)
    volume.publish(configText(A, B))
    with capturedLogs() as events:
        reactor.advance(INTERVAL - 0.01)
        assert names(daemon) == ["a"]
        reactor.advance(0.01)
        assert names(daemon) == ["a", "b"]
        for _ in range(5):
            reactor.advance(INTERVAL)
    assert reloads(events) == 1
    assert any("changed (sha256" in e.get("log_format", "") for e in events)
    assert daemon.config.digest == hashlib.sha256(volume.path.read_bytes()).hexdigest()


def test_sameContentNoReload(tmp_path: Path) -> None:
    """
    A swap to a new folder holding the same bytes is no change: nothing is reloaded.
    """
    volume = ConfigMapVolume(tmp_path)
    volume.publish(configText(A))
    reactor = UDPMemoryReactorClock()
    _, _ = started(volume, reactor)
    volume.publish(configText(A))
    with capturedLogs() as events:
        for _ in range(3):
            reactor.advance(INTERVAL)
    assert reloads(events) == 0


def test_badContentTriedOnceThenNewContentReloaded(tmp_path: Path) -> None:
    """
    A bad file is reloaded once, refused with its key path logged and nothing changed, not tried again on later checks, and the next good content is reloaded.
    """
    volume = ConfigMapVolume(tmp_path)
    volume.publish(configText(A))
    reactor = UDPMemoryReactorClock()
    daemon, watch = started(volume, reactor)
    before = daemon.getServiceNamed("a")
    volume.publish(configText(A, {**B, "listen": ["bogus:1"]}))
    with capturedLogs() as events:
        for _ in range(5):
            reactor.advance(INTERVAL)
    assert reloads(events) == 1
    errors = [e for e in events if e["log_level"] == LogLevel.error]
    assert any("services[1].listen[0]" in e.get("problems", "") for e in errors)
    assert any("the reload of {path} failed" in e["log_format"] for e in errors)
    assert daemon.getServiceNamed("a") is before and names(daemon) == ["a"]
    assert watch.refused == hashlib.sha256(volume.path.read_bytes()).hexdigest()
    volume.publish(configText(A, B))
    with capturedLogs() as events:
        reactor.advance(INTERVAL)
    assert reloads(events) == 1
    assert names(daemon) == ["a", "b"] and watch.refused is None


def test_missingFileLoggedOnceAndRunningConfigKept(tmp_path: Path) -> None:
    """
    A file that cannot be read for a while (a dangling ..data) is one warning over many checks, changes nothing, and the content found once it is back is reloaded.
    """
    volume = ConfigMapVolume(tmp_path)
    volume.publish(configText(A))
    reactor = UDPMemoryReactorClock()
    daemon, watch = started(volume, reactor)
    (tmp_path / "..data").unlink()
    with capturedLogs() as events:
        for _ in range(5):
            reactor.advance(INTERVAL)
        assert [e["log_format"] for e in events if e["log_level"] == LogLevel.warn] == [
            "watch_config: cannot read {path} ({error}); the running config stays, and netd checks again "
            "every {interval} seconds"
        ]
        assert reloads(events) == 0 and names(daemon) == ["a"] and watch.unreadable
        os.symlink(next(tmp_path.glob("..2026_*")).name, tmp_path / "..data")
        volume.publish(configText(A, B))
        reactor.advance(INTERVAL)
    assert any(e["log_format"] == "watch_config: {path} can be read again" for e in events)
    assert reloads(events) == 1 and names(daemon) == ["a", "b"]


def test_reloadBySighupIsNotRepeated(tmp_path: Path) -> None:
    """
    A reload by SIGHUP or POST /reload (Daemon.reload) of the changed file leaves the watch nothing to reload.
    """
    volume = ConfigMapVolume(tmp_path)
    volume.publish(configText(A))
    reactor = UDPMemoryReactorClock()
    daemon, _ = started(volume, reactor)
    volume.publish(configText(A, B))
    resultOf(Deferred.fromCoroutine(daemon.reload()))
    with capturedLogs() as events:
        for _ in range(3):
            reactor.advance(INTERVAL)
    assert reloads(events) == 0 and names(daemon) == ["a", "b"]


def test_intervalIsLiveAndJittered(tmp_path: Path) -> None:
    """
    Each wait is watch_interval times the drawn jitter factor (from JITTER), and a reload that changes watch_interval sets the next wait.
    """
    volume = ConfigMapVolume(tmp_path)
    volume.publish(configText(A))
    reactor = UDPMemoryReactorClock()
    application = NetdApplication(loadConfig(str(volume.path), discoverPlugins()), reactor)
    resultOf(Deferred.fromCoroutine(application.start()))
    asked: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        asked.append((low, high))
        return high

    ConfigWatch(application.daemon, str(volume.path), reactor, uniform=uniform).start()
    [call] = reactor.getDelayedCalls()
    assert call.getTime() == INTERVAL * JITTER[1] and asked == [JITTER]
    volume.publish(configText(A, watch_interval=10))
    reactor.advance(INTERVAL * JITTER[1])
    [call] = reactor.getDelayedCalls()
    assert call.getTime() - reactor.seconds() == 10 * JITTER[1]


def test_applicationWatchesFromServeUntilStop(tmp_path: Path) -> None:
    """
    With watch_config = true the application starts a watch of its file once it serves and cancels it when it stops.
    """
    volume = ConfigMapVolume(tmp_path)
    volume.publish(configText(A, watch_config=True))
    reactor = UDPMemoryReactorClock()
    application = NetdApplication(loadConfig(str(volume.path), discoverPlugins()), reactor)
    resultOf(Deferred.fromCoroutine(application.start()))
    watch = application.configWatch
    assert watch is not None and watch.watching and watch.path == str(volume.path)
    assert len(reactor.getDelayedCalls()) == 1
    application.stopService()
    assert not watch.watching
    assert all("check" not in repr(call.func) for call in reactor.getDelayedCalls())


def test_watchConfigChangeNeedsRestart(tmp_path: Path) -> None:
    """
    A reload that turns watch_config off is logged as needing a restart, and the watch goes on.
    """
    volume = ConfigMapVolume(tmp_path)
    volume.publish(configText(A, watch_config=True))
    reactor = UDPMemoryReactorClock()
    application = NetdApplication(loadConfig(str(volume.path), discoverPlugins()), reactor)
    resultOf(Deferred.fromCoroutine(application.start()))
    volume.publish(configText(A, watch_config=False))
    with capturedLogs() as events:
        reactor.advance(INTERVAL * JITTER[1])
    assert any(e.get("key") == "watch_config" and e["log_level"] == LogLevel.warn for e in events)
    assert application.daemon.config.daemon.watch_config
    assert application.configWatch is not None and application.configWatch.watching


def test_embeddedDefaultCannotBeWatched() -> None:
    """
    A config with no file behind it (the embedded default's source) and watch_config = true gets a warning and no watch.
    """
    config = parseConfig(
        {"daemon": {"admin": False, "watch_config": True}, "services": [A]}, DEFAULT_CONFIG_NAME, discoverPlugins()
    )
    reactor = UDPMemoryReactorClock()
    application = NetdApplication(config, reactor)
    with capturedLogs() as events:
        resultOf(Deferred.fromCoroutine(application.start()))
    assert application.configWatch is None
    assert any(e["log_format"] == "watch_config: the embedded default config has no file to watch" for e in events)


def test_digestIsTheFilesBytes(tmp_path: Path) -> None:
    """
    A loaded config carries the SHA-256 of the file's bytes; the embedded default carries none.
    """
    path = tmp_path / "netd.toml"
    path.write_text(configText(A))
    assert loadConfig(str(path), discoverPlugins()).digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loadConfig(None, discoverPlugins()).digest == ""


def test_watchIntervalBounds(tmp_path: Path) -> None:
    """
    watch_interval below 0.1 seconds is refused with its key path.
    """
    path = tmp_path / "netd.toml"
    path.write_text(configText(A, watch_interval=0.05))
    with pytest.raises(ConfigError, match=r"daemon\.watch_interval.*0\.1"):
        loadConfig(str(path), discoverPlugins())
