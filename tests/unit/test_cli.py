"""
The command line, run as a subprocess the way a user runs it: what each
subcommand prints, on which stream, and its exit status.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import netd
from netd.config.spec import DEFAULT_CONFIG_NAME, loadConfig
from netd.registry import discoverPlugins
from netd.tls.devcerts import ensureDevelopmentSet, writeBadCertificates

TIMEOUT = 60

BAD_CONFIG = """\
[daemon]
shutdown_timout = 5

[[services]]
name = "rev"
plugin = "reverse"
listen = ["tcp:0", "udp:0"]
prefx = "> "

[[services]]
name = "echo"
plugin = "ecko"
listen = ["tcp:0"]
"""

BAD_PROBLEMS = [
    "daemon.shutdown_timout: unknown key; did you mean 'shutdown_timeout'?",
    "services[0].prefx: unknown key; did you mean 'prefix'?",
    "services[0].listen[1]: plugin 'reverse' does not serve datagrams",
    "services[1].plugin: unknown plugin 'ecko'",
]


@pytest.fixture(autouse=True)
def stateHome(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """
    netd's state directory in the test's temporary folder (C{XDG_STATE_HOME},
    inherited by every netd run here), so that nothing (such as the embedded
    default's certificate = "auto") can write into the user's home.
    """
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state"


def runNetd(*args: str, cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    """
    Run C{python -m netd ARGS} to completion and capture what it printed.
    """
    return subprocess.run(
        [sys.executable, "-m", "netd", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def badConfig(tmp_path: Path) -> Path:
    """
    A config file with four problems in three tables.
    """
    path = tmp_path / "bad.toml"
    path.write_text(BAD_CONFIG, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "cwd",
    [pytest.param(None, id="from-the-repo"), pytest.param("/", id="from-root")],
)
def test_checkEmbeddedDefault(cwd: str | None) -> None:
    """
    netd check without -c validates the embedded default from any directory and prints it as TOML.
    """
    result = runNetd("check", cwd=cwd)
    assert (result.returncode, result.stderr) == (0, "")
    header, _, body = result.stdout.partition("\n")
    assert header == f"# {DEFAULT_CONFIG_NAME}: valid"
    assert tomllib.loads(result.stdout) == loadConfig(None, discoverPlugins()).toConfig()
    assert tomllib.loads(body)["services"]


def test_checkMakesNoCertificate(stateHome: Path) -> None:
    """
    netd check of the embedded default, whose tls-echo has certificate = "auto", makes no certificate and no state directory.
    """
    result = runNetd("check")
    assert (result.returncode, result.stderr) == (0, "")
    assert 'plugin = "tls-echo"' in result.stdout
    assert not stateHome.exists()


def test_checkOutputIsItselfValid(tmp_path: Path) -> None:
    """
    What netd check prints is a config that netd check accepts and prints unchanged.
    """
    first = runNetd("check")
    normalized = tmp_path / "normalized.toml"
    normalized.write_text(first.stdout, encoding="utf-8")
    second = runNetd("check", "-c", str(normalized))
    assert (second.returncode, second.stderr) == (0, "")
    assert second.stdout.splitlines()[0] == f"# {normalized}: valid"
    assert second.stdout.splitlines()[1:] == first.stdout.splitlines()[1:]


def test_checkBadConfig(badConfig: Path) -> None:
    """
    netd check on a bad file exits 1, prints every problem with file and key path on stderr, and nothing on stdout.
    """
    result = runNetd("check", "-c", str(badConfig))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    for problem in BAD_PROBLEMS:
        assert any(line.startswith(f"{badConfig}: {problem}") for line in lines), (problem, result.stderr)
    assert lines[-1] == "4 problems found; nothing was started."
    assert len(lines) == 5


@pytest.mark.parametrize(
    ("name", "contents", "expected"),
    [
        pytest.param("missing.toml", None, "cannot read the file", id="missing-file"),
        pytest.param("syntax.toml", "[daemon\n", "not valid TOML", id="toml-syntax-error"),
    ],
)
def test_checkUnloadableFile(tmp_path: Path, name: str, contents: str | None, expected: str) -> None:
    """
    netd check on a file it cannot read or parse exits 1 with one problem naming the file.
    """
    path = tmp_path / name
    if contents is not None:
        path.write_text(contents, encoding="utf-8")
    result = runNetd("check", "-c", str(path))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(f"{path}: {expected}"), result.stderr
    assert result.stderr.splitlines()[-1] == "1 problem found; nothing was started."


def test_runBadConfigListensOnNothing(badConfig: Path, tmp_path: Path) -> None:
    """
    netd run with a bad config exits 1 with every problem on stderr and never writes its ports file.
    """
    portsFile = tmp_path / "ports.json"
    result = runNetd("run", "-c", str(badConfig), "--ports-file", str(portsFile))
    assert result.returncode == 1
    assert result.stdout == ""
    for problem in BAD_PROBLEMS:
        assert f"{badConfig}: {problem}" in result.stderr
    assert "nothing was started" in result.stderr
    assert not portsFile.exists()


def test_pluginsListsOptions() -> None:
    """
    netd plugins lists echo and reverse with their sources, transports, framings and option defaults.
    """
    result = runNetd("plugins")
    assert (result.returncode, result.stderr) == (0, "")
    blocks = {block.split(":", 1)[0]: block for block in result.stdout.strip().split("\n\n")}
    assert {"echo", "reverse"} <= set(blocks)
    echo = blocks["echo"].splitlines()[1:]
    assert echo[:3] == [
        "  source: built-in netd_plugins.echo",
        "  transports: datagram, stream",
        "  framings: raw, line, netstring, u16, u32 (default raw)",
    ]
    assert [line for line in echo if not line.startswith("      ")][3:] == [
        "  min_source_port = 1024  (an integer)",
        "  rate = 1000.0  (a number)",
        "  burst = 1000  (an integer)",
    ]
    assert blocks["tls-echo"].splitlines()[-1] == "  options: none of its own"
    assert blocks["reverse"].splitlines()[1:] == [
        "  source: entry point 'reverse' = netd_reverse:plugin (from netd-reverse)",
        "  transports: stream",
        "  framings: line, netstring, u16, u32 (default line)",
        '  prefix = ""  (a string)',
        "      Text put before every reversed frame.",
        "  repeat = 1  (an integer)",
        "      How many times each reversed frame is sent.",
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(["--help"], ["usage: netd", "run", "check", "plugins", "--version"], id="top-level"),
        pytest.param(
            ["run", "--help"],
            [
                "usage: netd run",
                "--config FILE",
                "--ports-file FILE",
                "shutdown_timeout",
                "NETD_REACTOR",
                "uvloop (the default",
            ],
            id="run",
        ),
        pytest.param(["check", "--help"], ["usage: netd check", "--config FILE"], id="check"),
        pytest.param(["plugins", "--help"], ["usage: netd plugins", "netd.plugins entry-point group"], id="plugins"),
    ],
)
def test_help(args: list[str], expected: list[str]) -> None:
    """
    --help exits 0 and names the subcommands and their options.
    """
    result = runNetd(*args)
    assert (result.returncode, result.stderr) == (0, "")
    text = " ".join(result.stdout.split())
    for fragment in expected:
        assert fragment in text, (fragment, result.stdout)


def embeddedDefaultFacts() -> list[str]:
    """
    What a description of the embedded default config must name, read from
    the config itself: each service's name, plugin and address (host:port,
    with TCP and/or UDP), the dns-proxy's test record names, the automatic
    certificate, and where the control API listens.
    """
    config = loadConfig(None, discoverPlugins()).toConfig()
    facts = []
    for service in config["services"]:
        facts += [service["name"], service["plugin"]]
        ports: dict[str, set[str]] = {}
        for listen in service["listen"]:
            transport, port, interface = listen.split(":", 2)
            ports.setdefault(f"{interface.removeprefix('interface=')}:{port}", set()).add(transport)
        for address, transports in ports.items():
            facts.append(f"{' and '.join(sorted(t.upper() for t in transports))} on {address}")
        for name, records in service.get("records", {}).items():
            facts.append(name)
            facts += [
                f"{kind} {json.dumps(value) if kind == 'TXT' else value}"
                for kind, values in records.items()
                for value in values
            ]
        if service.get("tls", {}).get("certificate") == "auto":
            facts += ['certificate = "auto"', "~/.local/state/netd/tls/"]
    admin = config["daemon"]["admin"]
    transport, port, interface = admin.split(":", 2)
    facts.append(f"control API on {interface.removeprefix('interface=')}:{port}")
    return facts


@pytest.mark.parametrize("args", [pytest.param([], id="netd"), pytest.param(["run"], id="run")])
def test_helpDescribesEmbeddedDefault(args: list[str]) -> None:
    """
    netd --help and netd run --help describe the embedded default in full: every service with its plugin and addresses, the test records, the automatic certificate and where it is made, and the control API.
    """
    result = runNetd(*args, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    missing = [fact for fact in embeddedDefaultFacts() if fact not in text]
    assert missing == [], result.stdout


def test_version() -> None:
    """
    --version prints the package version and exits 0.
    """
    result = runNetd("--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"netd {netd.__version__}\n", "")


def test_consoleScript() -> None:
    """
    The installed netd console script is the same command as python -m netd.
    """
    script = Path(sys.executable).with_name("netd")
    assert script.exists(), script
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=TIMEOUT)
    assert (result.returncode, result.stdout) == (0, f"netd {netd.__version__}\n")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param([], "the following arguments are required: COMMAND", id="no-subcommand"),
        pytest.param(["serve"], "invalid choice: 'serve'", id="unknown-subcommand"),
        pytest.param(["check", "--confg", "x.toml"], "unrecognized arguments: --confg", id="unknown-option"),
    ],
)
def test_usageErrors(args: list[str], expected: str) -> None:
    """
    A command line argparse cannot read exits 2 with the usage and the reason on stderr.
    """
    result = runNetd(*args)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("usage: netd")
    assert expected in result.stderr


def tlsConfig(tmp_path: Path, certificate: str, privateKey: str) -> Path:
    """
    A config file with one tls-echo service on the given certificate and key files.
    """
    path = tmp_path / "tls.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            [daemon]
            admin = false

            [[services]]
            name = "secure"
            plugin = "tls-echo"
            listen = ["tcp:0:interface=127.0.0.1"]
            tls = {{ certificate = "{certificate}", private_key = "{privateKey}" }}
            """
        )
    )
    return path


def test_checkOpensTLSFiles(tmp_path: Path) -> None:
    """
    netd check opens the files of tls tables: a good pair passes, a missing key file and a key of another certificate fail naming the file's own key path.
    """
    files, _ = ensureDevelopmentSet(str(tmp_path / "certs"))
    good = runNetd("check", "-c", str(tlsConfig(tmp_path, files.server, files.serverKey)))
    assert good.returncode == 0, good.stderr
    missing = runNetd("check", "-c", str(tlsConfig(tmp_path, files.server, str(tmp_path / "nowhere.pem"))))
    assert missing.returncode == 1
    assert missing.stderr.startswith(f"{tmp_path / 'tls.toml'}: services[0].tls.private_key: cannot read ")
    assert "nowhere.pem" in missing.stderr
    assert missing.stdout == ""
    mismatched = runNetd("check", "-c", str(tlsConfig(tmp_path, files.server, files.clientKey)))
    assert mismatched.returncode == 1
    assert f"{tmp_path / 'tls.toml'}: services[0].tls.private_key: " in mismatched.stderr
    assert "does not match the certificate" in mismatched.stderr


GARBAGE_PEM = "not a certificate\n"


def checkedService(tmp_path: Path, service: str) -> subprocess.CompletedProcess[str]:
    """
    netd check of a config at C{tmp_path}/netd.toml without the control API and with one service, C{service} (the
    keys of its table, as TOML lines).
    """
    path = tmp_path / "netd.toml"
    path.write_text(f'[daemon]\nadmin = false\n\n[[services]]\nname = "s"\n{service}')
    return runNetd("check", "-c", str(path))


def test_checkOpensClientTLSFiles(tmp_path: Path) -> None:
    """
    netd check opens the files of a plugin's client TLS table (the proxy's upstream_tls) as netd run would: a CA
    bundle with no certificate and a client key of another certificate fail at their own key paths.
    """
    files, _ = ensureDevelopmentSet(str(tmp_path / "certs"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(GARBAGE_PEM)
    proxy = 'plugin = "proxy"\nlisten = ["tcp:0"]\nupstream = "tcp:127.0.0.1:6379"\nupstream_tls = '
    good = checkedService(
        tmp_path,
        proxy + f'{{ ca_bundle = "{files.ca}", certificate = "{files.client}", private_key = "{files.clientKey}" }}\n',
    )
    assert good.returncode == 0, good.stderr
    noCA = checkedService(tmp_path, proxy + f'{{ ca_bundle = "{garbage}", server_name = "redis.example" }}\n')
    assert noCA.returncode == 1
    assert f"{tmp_path / 'netd.toml'}: services[0].upstream_tls.ca_bundle: " in noCA.stderr
    assert "holds no PEM certificate" in noCA.stderr
    otherKey = checkedService(
        tmp_path, proxy + f'{{ certificate = "{files.client}", private_key = "{files.serverKey}" }}\n'
    )
    assert otherKey.returncode == 1
    assert f"{tmp_path / 'netd.toml'}: services[0].upstream_tls.private_key: " in otherKey.stderr


def test_checkOpensPluginCABundles(tmp_path: Path) -> None:
    """
    netd check opens a plugin's CA bundle (dns-proxy's ca_bundle) as netd run would: one without a certificate fails
    at its key path, a good one passes.
    """
    files, _ = ensureDevelopmentSet(str(tmp_path / "certs"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(GARBAGE_PEM)
    dns = 'plugin = "dns-proxy"\nlisten = ["udp:0"]\nupstreams = ["tls:127.0.0.1:853:name=dns.example"]\nca_bundle = '
    good = checkedService(tmp_path, dns + f'"{files.ca}"\n')
    assert good.returncode == 0, good.stderr
    bad = checkedService(tmp_path, dns + f'"{garbage}"\n')
    assert bad.returncode == 1
    assert f"{tmp_path / 'netd.toml'}: services[0].ca_bundle: the CA bundle " in bad.stderr
    assert "holds no PEM certificate" in bad.stderr


def test_checkWarnsOfExpiredCertificate(tmp_path: Path) -> None:
    """
    netd check accepts an expired certificate (netd serves the bad ones on purpose) but says it has expired.
    """
    bad = {entry.name: (certificate, key) for entry, certificate, key in writeBadCertificates(str(tmp_path / "certs"))}
    certificate, key = bad["expired"]
    result = runNetd("check", "-c", str(tlsConfig(tmp_path, certificate, key)))
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and "expired" in result.stderr


def test_startErrorsNameTheirKeyPath() -> None:
    """
    netd run reports a start error as check reports a problem: a service's at services[N] plus its key within the service, the control API's and a privilege error's from the top of the file.
    """
    from netd.config.options import Problem
    from netd.config.spec import parseConfig
    from netd.daemon.application import startErrorProblem
    from netd.daemon.privileges import PrivilegeError
    from netd.daemon.service import ServiceStartError

    echo = {"plugin": "echo", "listen": ["tcp:0"]}
    config = parseConfig({"services": [{"name": "a", **echo}, {"name": "b", **echo}]}, "netd.toml", discoverPlugins())
    tls = ServiceStartError("service 'b': cannot read", service="b", key=("tls", "certificate"), reason="cannot read")
    assert startErrorProblem(config, tls) == Problem(("services", 1, "tls", "certificate"), "cannot read")
    token = ServiceStartError("control API: too open", key=("daemon", "admin_token_file"), reason="too open")
    assert startErrorProblem(config, token).render("netd.toml") == "netd.toml: daemon.admin_token_file: too open"
    state = PrivilegeError("[daemon] state_dir '/s': owned by nobody", ("daemon", "state_dir"))
    assert startErrorProblem(config, state) == Problem(
        ("daemon", "state_dir"), "[daemon] state_dir '/s': owned by nobody"
    )
