"""
What starting a daemon loads: only what its config uses (the control API's
twisted.web, each plugin, the installed entry points), with the cyclic
collector running again once netd's modules are loaded.

Each case runs in a fresh Python process, the only place where what an import
loads can be seen.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

OPTIONAL = (
    "netd.daemon.api.server",
    "twisted.web.server",
    "netd_plugins.dnsproxy",
    "twisted.names.dns",
    "importlib.metadata",
)
"""
Modules a daemon loads only when its config uses them.
"""

PROBE = f"""
import gc, json, sys
from twisted.internet.testing import MemoryReactorClock
from netd.__main__ import main
from netd.config.spec import loadConfig
from netd.daemon.application import NetdApplication
from netd.registry import discoverPlugins

sys.argv = ["netd", "check", "-c", sys.argv[1]]
assert main() == 0
NetdApplication(loadConfig(sys.argv[3], discoverPlugins()), MemoryReactorClock()).build()
print(json.dumps({{"loaded": [m for m in {OPTIONAL!r} if m in sys.modules], "collecting": gc.isenabled()}}))
"""
"""
Check a config through the command line's entry point (which loads netd with
the collector paused), build its application (on a fake reactor) as C{netd run}
does, then report which of L{OPTIONAL} are loaded and whether the collector runs.
"""

ECHO_ONLY = """\
[daemon]
admin = false

[[services]]
name = "echo"
plugin = "echo"
listen = ["tcp:0:interface=127.0.0.1"]
"""

EVERYTHING = """\
[daemon]
admin = "tcp:0:interface=127.0.0.1"

[[services]]
name = "dns"
plugin = "dns-proxy"
listen = ["udp:0:interface=127.0.0.1"]
upstreams = ["udp:127.0.0.1:53"]

[[services]]
name = "reversed"
plugin = "reverse"
listen = ["tcp:0:interface=127.0.0.1"]
"""


def probe(tmp_path: Path, config: str) -> dict[str, object]:
    """
    Run L{PROBE} on C{config} in a fresh process.
    """
    path = tmp_path / "netd.toml"
    path.write_text(config)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return answer


def test_echoOnlyLoadsNothingElse(tmp_path: Path) -> None:
    """
    A config with one echo service and no control API loads neither twisted.web, nor another plugin, nor the entry points.
    """
    assert probe(tmp_path, ECHO_ONLY) == {"loaded": [], "collecting": True}


def test_noAdminKeyLoadsNoWeb(tmp_path: Path) -> None:
    """
    A config without an admin key has no control API, so twisted.web is not loaded.
    """
    assert probe(tmp_path, ECHO_ONLY.replace("admin = false\n", "")) == {"loaded": [], "collecting": True}


def test_whatIsUsedIsLoaded(tmp_path: Path) -> None:
    """
    A config with the control API, a dns-proxy and a third-party plugin loads each of them.
    """
    assert probe(tmp_path, EVERYTHING) == {"loaded": list(OPTIONAL), "collecting": True}
