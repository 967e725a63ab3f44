"""
The harness's pieces that need no process (L{netd.testing.harness}): how a
test's config is completed, the command line and environment a L{NetdServer}
starts netd with, and that loading the pytest plugin stays cheap.  Running
netd on the harness is tests/integration/test_harness.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from netd.testing.harness import TEST_ADMIN, NetdServer, netdCommand, withDaemonKeys

KEYS = {"admin": TEST_ADMIN, "shutdown_timeout": 0}

SERVICE = """
# the test's own comment
[[services]]
name = "echo"
plugin = "echo"
listen = ["tcp:0:interface=127.0.0.1"]
"""


def test_textWithoutDaemonTableGetsOne() -> None:
    """
    TOML text without a [daemon] table gets one in front with the keys, and every line of its own kept as written.
    """
    text = withDaemonKeys(SERVICE, KEYS)
    assert text.endswith(SERVICE)
    assert tomllib.loads(text)["daemon"] == KEYS


def test_textKeysGoUnderItsDaemonHeader() -> None:
    """
    The keys go right under the text's own [daemon] header (a comment after it allowed), beside its keys, and the rest of its lines stay as written.
    """
    config = '[daemon]  # mine\nlog_format = "json"\n' + SERVICE
    text = withDaemonKeys(config, KEYS)
    assert text.startswith("[daemon]  # mine\n")
    assert text.endswith('log_format = "json"\n' + SERVICE)
    assert tomllib.loads(text)["daemon"] == {**KEYS, "log_format": "json"}


def test_keysTheConfigSetsAreKept() -> None:
    """
    A key the config sets itself keeps its value, in text and in a dict, and text that sets every key comes back unchanged.
    """
    config = "[daemon]\nadmin = false\n" + SERVICE
    assert tomllib.loads(withDaemonKeys(config, KEYS))["daemon"] == {"admin": False, "shutdown_timeout": 0}
    complete = "[daemon]\nadmin = false\nshutdown_timeout = 3\n" + SERVICE
    assert withDaemonKeys(complete, KEYS) == complete
    table = tomllib.loads(withDaemonKeys({"daemon": {"shutdown_timeout": 5}, "services": []}, KEYS))
    assert table == {"daemon": {"admin": TEST_ADMIN, "shutdown_timeout": 5}, "services": []}


def test_daemonTableWrittenInline() -> None:
    """
    A [daemon] given as dotted keys (no header to write under) is completed through a re-written file that keeps its keys.
    """
    table = tomllib.loads(withDaemonKeys('daemon.log_format = "json"\n' + SERVICE, KEYS))
    assert table["daemon"] == {**KEYS, "log_format": "json"}
    assert table["services"][0]["name"] == "echo"


def test_textThatDoesNotParseIsLeftForNetd() -> None:
    """
    TOML text that does not parse comes back unchanged, for netd to report its syntax error.
    """
    broken = '[[services]]\nname = "echo\n'
    assert withDaemonKeys(broken, KEYS) == broken


def test_serverCompletesItsConfig(tmp_path: Path) -> None:
    """
    A server's config gets the test's control API and its shutdownTimeout; shutdownTimeout=None leaves netd's default, and a config file's path is not completed at all.
    """
    assert tomllib.loads(NetdServer(SERVICE, tmp_path).configText())["daemon"] == KEYS
    assert tomllib.loads(NetdServer(SERVICE, tmp_path, shutdownTimeout=None).configText())["daemon"] == {
        "admin": TEST_ADMIN
    }
    file = tmp_path / "mine.toml"
    server = NetdServer(file, tmp_path / "files")
    assert server.configFile == file
    with pytest.raises(TypeError):
        server.configText()


def test_commandLine(tmp_path: Path) -> None:
    """
    The command is the launcher, then -c with the config file (none for the embedded default), --ports-file and the extra arguments.
    """
    server = NetdServer(SERVICE, tmp_path, launcher=["wrapper", "--flag", *netdCommand("run")], arguments=["--extra"])
    assert server.command() == [
        "wrapper", "--flag", sys.executable, "-m", "netd", "run",
        "-c", str(tmp_path / "netd.toml"), "--ports-file", str(tmp_path / "ports.json"), "--extra",
    ]  # fmt: skip
    assert NetdServer(None, tmp_path).command() == [*netdCommand("run"), "--ports-file", str(tmp_path / "ports.json")]


def test_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    netd's environment drops what systemd meant for the test runner and STATE_DIRECTORY, puts the state directory in the server's folder, and applies the test's changes (None removes a variable).
    """
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("LISTEN_FDS", "3")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/netd")
    monkeypatch.setenv("KEPT", "yes")
    monkeypatch.setenv("DROPPED", "yes")
    server = NetdServer(SERVICE, tmp_path, environment={"NETD_REACTOR": "twisted", "DROPPED": None})
    environment = server.environment
    assert not {"NOTIFY_SOCKET", "LISTEN_FDS", "STATE_DIRECTORY", "DROPPED"} & environment.keys()
    assert environment["KEPT"] == "yes" and environment["NETD_REACTOR"] == "twisted"
    assert environment["XDG_STATE_HOME"] == str(tmp_path / "state")
    assert server.stateDir == tmp_path / "state" / "netd"
    home = NetdServer(None, tmp_path, environment={"HOME": str(tmp_path / "home"), "XDG_STATE_HOME": None})
    assert home.stateDir == tmp_path / "home" / ".local" / "state" / "netd"


def test_notStartedServer(tmp_path: Path) -> None:
    """
    A server that was never started has no PID, no addresses and no control API, and stopping it is a no-op answering None.
    """
    server = NetdServer(SERVICE, tmp_path)
    with pytest.raises(RuntimeError):
        _ = server.pid
    with pytest.raises(KeyError, match="runs no service 'echo'"):
        server.address("echo")
    with pytest.raises(RuntimeError, match="no control API"):
        _ = server.admin
    assert server.adminAddress is None and not server.running
    assert server.stop() is None


HEAVY = (
    "OpenSSL",
    "cryptography",
    "twisted.internet.reactor",
    "twisted.web",
    "netd.tls",
    "netd.daemon.daemon",
    "netd.testing.memory",
)
"""
What loading the pytest plugin must not import: it runs in every test session
wherever netd is installed, and netd itself runs in a child process.
"""


def test_loadingThePytestPluginIsCheap() -> None:
    """
    Importing netd.testing and its pytest plugin (as pytest does through the pytest11 entry point) imports none of the TLS, reactor or daemon modules, nor the in-memory kit.
    """
    probe = "import json, sys, netd.testing, netd.testing.pytest_plugin; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    loaded = json.loads(done.stdout)
    assert "netd.testing.harness" in loaded
    assert [name for name in loaded if name.startswith(HEAVY)] == []
