"""
netd under twistd, as real processes: C{twistd -n netd -c FILE} serves the
same echo as C{netd run}, reloads on SIGHUP, logs in the config's
C{log_format} and stops on SIGTERM; twistd's own C{--pidfile}, C{--logfile},
C{--uid} and C{--gid} apply around it.

The drop-in is put on C{PYTHONPATH} in a C{twisted/plugins} folder of its own,
as a plain C{pip install .} puts it into site-packages (an editable install
does not expose it to Twisted's plugin scan).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netd.testing.harness import NetdServer

from .conftest import IO_TIMEOUT, connect, echoService, recvExactly, waitForLog, withTestAdmin
from .test_privileges import freePrivilegedPort, processIds, requireRoot

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def twistdCommand() -> list[str]:
    """
    This interpreter's twistd.
    """
    script = Path(sys.executable).parent / "twistd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


@pytest.fixture
def twistd(tmp_path: Path) -> Iterator[Callable[..., NetdServer]]:
    """
    A function that runs C{twistd [OPTIONS] netd -c CONFIG --ports-file FILE}
    in C{directory} (tmp_path by default) and returns it, not waiting;
    each process is killed, by its PID, at teardown.
    """
    dropIns = tmp_path / "dropins" / "twisted" / "plugins"
    dropIns.mkdir(parents=True)
    shutil.copy(ROOT / "twisted" / "plugins" / "netd_plugin.py", dropIns)
    shutil.copy(ROOT / "twisted" / "plugins" / "netd_reactor.py", dropIns)
    started: list[NetdServer] = []

    def start(config: str, *options: str, directory: Path = tmp_path) -> NetdServer:
        configFile = directory / "netd.toml"
        configFile.write_text(withTestAdmin(config))
        configFile.chmod(0o644)
        pythonPath = os.pathsep.join(p for p in (str(tmp_path / "dropins"), os.environ.get("PYTHONPATH", "")) if p)
        netd = NetdServer(
            configFile,
            directory,
            launcher=[*twistdCommand(), *options, "netd"],
            environment={"PYTHONPATH": pythonPath},
            cwd=directory,
        )
        started.append(netd)
        return netd.start(wait=False)

    yield start
    for netd in started:
        netd.kill()


def stoppedBySigterm(netd: NetdServer) -> None:
    """
    SIGTERM netd and check that it drained and exited as twistd exits on a
    signal: by the same signal, re-raised once the reactor has stopped.
    """
    code = netd.stop(signal.SIGTERM)
    assert code in (0, -signal.SIGTERM), netd.log()
    log = waitForLog(netd, "Server Shut Down.")
    assert "[echo#info] stopped" in log


def test_twistdServesEcho(twistd: Callable[..., NetdServer]) -> None:
    """
    twistd -n --pidfile= netd -c FILE serves echo on the configured address and stops on SIGTERM.
    """
    netd = twistd(echoService("echo", ["tcp:0:interface=127.0.0.1"]), "-n", "--pidfile=")
    netd.waitUntilReady()
    with connect(netd.address("echo")) as client:
        client.sendall(b"through twistd\n")
        assert recvExactly(client, 15) == b"through twistd\n"
    assert "netd is ready: 1 service" in netd.log()
    stoppedBySigterm(netd)


def test_twistdReloadsOnSighup(twistd: Callable[..., NetdServer]) -> None:
    """
    SIGHUP makes twistd netd reload its config as netd run does: an added service listens and the ports file names it, while the unchanged one keeps its held connection.
    """
    echo = echoService("echo", ["tcp:0:interface=127.0.0.1"])
    netd = twistd(echo, "-n", "--pidfile=")
    netd.waitUntilReady()
    with connect(netd.address("echo")) as client:
        client.sendall(b"before\n")
        assert recvExactly(client, 7) == b"before\n"
        configFile = netd.portsFile.parent / "netd.toml"
        configFile.write_text(configFile.read_text() + echoService("extra", ["tcp:0:interface=127.0.0.1"]))
        netd.process.send_signal(signal.SIGHUP)
        log = waitForLog(netd, "reload: service extra (echo) added")
        assert "reload: service echo (echo) unchanged" in log
        netd.waitUntilReady()
        assert set(netd.services) == {"echo", "extra"}
        with connect(netd.address("extra")) as extra:
            extra.sendall(b"added\n")
            assert recvExactly(extra, 6) == b"added\n"
        client.sendall(b"after\n")
        assert recvExactly(client, 6) == b"after\n"
    assert netd.process.poll() is None
    stoppedBySigterm(netd)


def test_twistdLogsInTheConfigsFormat(twistd: Callable[..., NetdServer]) -> None:
    """
    With log_format = "json", every line twistd netd writes (twistd's own included) is one JSON object as netd run writes it, naming its logger.
    """
    netd = twistd(
        '[daemon]\nlog_format = "json"\n\n' + echoService("echo", ["tcp:0:interface=127.0.0.1"]), "-n", "--pidfile="
    )
    netd.waitUntilReady()
    code = netd.stop(signal.SIGTERM)
    assert code in (0, -signal.SIGTERM), netd.log()
    records = [json.loads(line) for line in netd.log().splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "msg"} <= set(record) for record in records), records
    loggers = {record["logger"] for record in records}
    assert {"netd.daemon.tap", "netd.daemon.daemon", "netd.daemon.api.server", "echo"} <= loggers, loggers
    assert any(record["msg"].startswith("netd is ready: 1 service") for record in records)
    assert any(record["msg"] == "Server Shut Down." for record in records)


def test_twistdBadConfig(twistd: Callable[..., NetdServer]) -> None:
    """
    An invalid config makes twistd netd exit 1 with the problem, before anything listens.
    """
    config = echoService("echo", ["tcp:0:interface=127.0.0.1"]).replace('plugin = "echo"', 'plugin = "ecko"')
    netd = twistd(config, "-n", "--pidfile=")
    assert netd.process.wait(timeout=IO_TIMEOUT * 3) == 1
    assert "services[0].plugin: unknown plugin 'ecko'" in netd.log()
    assert not netd.portsFile.exists()


@pytest.fixture
def sharedDir() -> Iterator[Path]:
    """
    A folder nobody may write in, for what twistd and netd write after the switch.
    """
    path = Path(tempfile.mkdtemp(prefix="netd-twistd-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_twistdOptionsApply(twistd: Callable[..., NetdServer], sharedDir: Path) -> None:
    """
    twistd's --pidfile, --logfile, --uid and --gid apply: netd binds a port below 1024 as root, then serves it as nobody, logging to the file and with its PID in the pidfile.
    """
    requireRoot()
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid)
    port = freePrivilegedPort()
    pidfile = sharedDir / "twistd.pid"
    logfile = sharedDir / "twistd.log"
    netd = twistd(
        echoService("echo", [f"tcp:{port}:interface=127.0.0.1"]),
        "-n",
        f"--pidfile={pidfile}",
        f"--logfile={logfile}",
        f"--uid={nobody.pw_uid}",
        f"--gid={group.gr_gid}",
        directory=sharedDir,
    )
    netd.waitUntilReady()
    assert int(pidfile.read_text()) == netd.pid
    ids = processIds(netd.pid)
    assert ids["Uid"] == [str(nobody.pw_uid)] * 4 and ids["Gid"] == [str(group.gr_gid)] * 4
    with connect(("127.0.0.1", port)) as client:
        client.sendall(b"uid switched\n")
        assert recvExactly(client, 13) == b"uid switched\n"
    assert "listening on tcp 127.0.0.1:" in logfile.read_text()
    netd.logFile = logfile
    stoppedBySigterm(netd)
