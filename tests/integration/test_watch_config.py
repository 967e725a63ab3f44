"""
C{[daemon] watch_config} in a real netd: its config file is a symlink into a
folder written as the kubelet writes a ConfigMap volume, and each swap of the
C{..data} symlink is reloaded without a signal, a bad file changing nothing.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from netd.testing.harness import TEST_ADMIN, NetdServer, withDaemonKeys

from .conftest import IO_TIMEOUT, connect, echoService, recvExactly, waitForLog

pytestmark = pytest.mark.integration

LOOPBACK = ["tcp:0:interface=127.0.0.1"]
INTERVAL = 0.2


def config(*services: str) -> str:
    """
    The echo service, then C{services}, watched every INTERVAL seconds.
    """
    text = echoService("echo", LOOPBACK) + "".join(services)
    keys = {"admin": TEST_ADMIN, "shutdown_timeout": 0, "watch_config": True, "watch_interval": INTERVAL}
    return withDaemonKeys(text, keys)


def publish(root: Path, version: int, text: str) -> None:
    """
    Publish C{text} as C{root/netd.toml} the way the kubelet's atomic writer
    updates a ConfigMap volume: a new C{..TIMESTAMP} folder, a C{..data_tmp}
    symlink to it renamed over C{..data}, the old folder removed.
    """
    folder = root / f"..2026_12_07_12_00_{version:02d}.000000001"
    folder.mkdir()
    (folder / "netd.toml").write_text(text)
    data = root / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    os.symlink(folder.name, root / "..data_tmp")
    os.replace(root / "..data_tmp", data)
    if not (root / "netd.toml").is_symlink():
        os.symlink("..data/netd.toml", root / "netd.toml")
    if old is not None:
        shutil.rmtree(root / old)


def waitForServices(netd: NetdServer, names: list[str]) -> dict[str, Any]:
    """
    Poll GET /services until it lists exactly C{names}; return its services.
    """
    deadline = time.monotonic() + IO_TIMEOUT
    while True:
        services: dict[str, Any] = netd.admin.services()["services"]
        if sorted(services) == sorted(names):
            return services
        if time.monotonic() > deadline:
            raise AssertionError(f"/services never listed {names} within {IO_TIMEOUT} seconds: {sorted(services)}")
        time.sleep(0.05)


def echoes(address: tuple[str, int], payload: bytes) -> None:
    """
    Check, on a new connection, that the echo service at C{address} echoes.
    """
    with connect(address) as client:
        client.sendall(payload)
        assert recvExactly(client, len(payload)) == payload


def test_symlinkSwapReloadsAndBadSwapChangesNothing(tmp_path: Path) -> None:
    """
    A kubelet-style swap to a config that adds a service is reloaded with no signal while a held connection keeps echoing, and a swap to a bad config is refused once, logged, and leaves netd serving what it served.
    """
    volume = tmp_path / "config"
    volume.mkdir()
    publish(volume, 1, config())
    with NetdServer(volume / "netd.toml", tmp_path / "run") as netd, connect(netd.address("echo")) as held:
        held.sendall(b"before")
        assert recvExactly(held, 6) == b"before"
        publish(volume, 2, config(echoService("extra", LOOPBACK)))
        services = waitForServices(netd, ["echo", "extra"])
        log = netd.log()
        assert "watch_config: " + str(volume / "netd.toml") + " changed (sha256" in log
        assert "reload: service echo (echo) unchanged" in log
        [extra] = services["extra"]["addresses"]
        echoes((extra["host"], extra["port"]), b"new service")
        held.sendall(b"after")
        assert recvExactly(held, 5) == b"after"

        offset = netd.logOffset()
        publish(volume, 3, config(echoService("extra", LOOPBACK), echoService("bad", ["bogus:1"])))
        waitForLog(netd, "the reload of " + str(volume / "netd.toml") + " failed")
        time.sleep(INTERVAL * 5)
        since = netd.logSince(offset)
        assert since.count("reloading the config from") == 1, since
        assert "services[2].listen[0]" in since
        waitForServices(netd, ["echo", "extra"])
        echoes((extra["host"], extra["port"]), b"still serving")
        held.sendall(b"held")
        assert recvExactly(held, 4) == b"held"

        publish(volume, 4, config())
        waitForServices(netd, ["echo"])
    assert netd.returncode == 0
