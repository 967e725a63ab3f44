"""
The README's quick start, as a new user follows it: its example commands run as
written (read from the README's own blocks, so that the docs cannot drift)
against a real netd on the embedded default config; every tool they use is
installed by ./setup.sh; and the test set-up (./setup.sh --test, which ./test.sh
and CI run) leaves the quick start's .venv as it was.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import textwrap
from pathlib import Path

from netd.testing.harness import NetdServer, netdCommand

from .conftest import requireEmbeddedDefaultPorts, requireTool, usesEmbeddedDefaultPorts

ROOT = Path(__file__).resolve().parents[2]

COMMAND_TIMEOUT = 20.0

EXPECTED = re.compile(r"^(?P<command>.*?\S)\s+# (?P<output>.+)$")
"""
An example line: the command, then at least one space, C{# } and the output it prints.
"""


def quickStart() -> str:
    """
    The text of the README's Quick start section.
    """
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"^## Quick start\n(.*?)^## ", readme, re.MULTILINE | re.DOTALL)
    assert found is not None, "README.md has no '## Quick start' section"
    return found.group(1)


def shellBlocks() -> list[str]:
    """
    The C{sh} code blocks of the Quick start section, in order.
    """
    return re.findall(r"^```sh\n(.*?)^```$", quickStart(), re.MULTILINE | re.DOTALL)


def blockWith(text: str) -> tuple[int, str]:
    """
    The index and text of the one Quick start block that contains C{text}.
    """
    matches = [(index, block) for index, block in enumerate(shellBlocks()) if text in block]
    assert len(matches) == 1, f"expected one quick-start block with {text!r}, found {len(matches)}"
    return matches[0]


def examples() -> list[tuple[str, str]]:
    """
    The quick start's example commands, each with the output its comment gives.
    """
    _, block = blockWith("socat")
    pairs = []
    for line in block.splitlines():
        if not line.strip():
            continue
        example = EXPECTED.match(line)
        assert example is not None, f"quick-start example without '# OUTPUT': {line!r}"
        pairs.append((example.group("command"), example.group("output")))
    return pairs


def programs(command: str) -> set[str]:
    """
    The programs a shell command line runs (the first word of each part of
    its pipelines and lists), shell builtins and syntax aside.
    """
    names = set()
    for part in re.split(r"[|;&()]+", command):
        words = shlex.split(part)
        if words:
            names.add(words[0])
    return names - {"echo", "sleep"}


def exampleTools() -> dict[str, str]:
    """
    setup.sh's quick-start tools: each command with its Debian package.
    """
    found = re.search(r'^EXAMPLE_TOOLS="([^"]*)"$', (ROOT / "setup.sh").read_text(), re.MULTILINE)
    assert found is not None, "setup.sh has no EXAMPLE_TOOLS list"
    return dict(entry.split(":", 1) for entry in found.group(1).split())


def test_examplesComeBeforeTheTestCommand() -> None:
    """
    The quick start shows netd run, then the example commands, then the test command, each in a block of its own.
    """
    run, runBlock = blockWith("netd run")
    tour, _ = blockWith("socat")
    suite, suiteBlock = blockWith("./test.sh")
    assert run < tour < suite
    assert runBlock.strip() == "./setup.sh && .venv/bin/netd run"
    assert suiteBlock.strip() == "./test.sh"


def test_everyExampleToolIsInstalledBySetup() -> None:
    """
    Every program the quick-start examples run is one ./setup.sh installs when missing, and the README's install line names the same packages.
    """
    tools = exampleTools()
    used = set().union(*(programs(command) for command, _ in examples()))
    assert used == set(tools), (used, tools)
    line = f"apt-get install {' '.join(tools.values())}"
    assert line in quickStart()


def test_ciRunsTheReadmeTestCommand() -> None:
    """
    .ci/run runs exactly the README's test command, from the repository root.
    """
    _, suiteBlock = blockWith("./test.sh")
    script = (ROOT / ".ci" / "run").read_text()
    assert script.rstrip().splitlines()[-1] == f"exec {suiteBlock.strip()}"


def startDefault(home: Path, run: int) -> NetdServer:
    """
    netd run without -c, as the quick start runs it, for a user whose home is
    C{home} (so that its development certificates land in
    C{~/.local/state/netd/tls/}, where the README's commands look).
    """
    return NetdServer(None, home / f"netd-{run}", environment={"HOME": str(home), "XDG_STATE_HOME": None}).start()


def runExample(command: str, home: Path) -> tuple[int, str, str]:
    """
    Run one example command line with sh, as a user at a terminal would, with
    nothing on its standard input but what the command line gives: its exit
    status, standard output and standard error.  One that does not return in
    time fails the test, and its processes (a session of their own) are killed.
    """
    process = subprocess.Popen(
        ["sh", "-c", command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, HOME=str(home)),
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise AssertionError(f"{command!r} did not return within {COMMAND_TIMEOUT} seconds") from None
    return process.returncode, out, err


@usesEmbeddedDefaultPorts
def test_quickStartExamplesWorkAsWritten(tmp_path: Path) -> None:
    """
    Every quick-start example, run as written against netd run on the embedded default, exits 0 and prints what its comment says (whitespace aside); the first start logs where it made the development CA and how clients trust it, and the next says it uses it.
    """
    pairs = examples()
    for command, _ in pairs:
        for program in programs(command):
            requireTool(program)
    requireEmbeddedDefaultPorts("the quick-start test runs netd on the embedded default config")
    home = tmp_path / "home"
    home.mkdir()
    netd = startDefault(home, 0)
    try:
        for command, expected in pairs:
            status, out, err = runExample(command, home)
            assert (status, "".join(out.split())) == (0, "".join(expected.split())), (command, out, err)
    finally:
        assert netd.stop() == 0, netd.log()
    directory = home / ".local" / "state" / "netd" / "tls"
    ca = directory / "ca.pem"
    assert any(f"-CAfile ~/{ca.relative_to(home)} " in command for command, _ in pairs)
    assert (
        f"made the development certificate for localhost, 127.0.0.1 and ::1 in {directory}; clients trust it "
        f"with the CA {ca} (curl --cacert {ca}, openssl s_client -CAfile {ca}"
    ) in netd.log()
    again = startDefault(home, 1)
    assert again.stop() == 0, again.log()
    assert (
        f"using the development certificate for localhost, 127.0.0.1 and ::1 in {directory}; clients trust it with the CA {ca}"
        in again.log()
    )
    assert "made the development certificate" not in again.log()


# The README's five-minute tour, after the quick start.


def tourSection() -> str:
    """
    The text of the README's five-minute tour section.
    """
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"^## A five-minute tour\n(.*?)^## ", readme, re.MULTILINE | re.DOTALL)
    assert found is not None, "README.md has no '## A five-minute tour' section"
    return found.group(1)


def tourBlocks(info: str) -> list[str]:
    """
    The code blocks of the tour whose info string is C{info}, dedented (they sit in a list).
    """
    return [
        textwrap.dedent(block)
        for block in re.findall(rf"^ *```{info}\n(.*?)^ *```$", tourSection(), re.MULTILINE | re.DOTALL)
    ]


def runTourBlock(block: str, home: Path, cwd: Path) -> tuple[int, str, str]:
    """
    Run one tour block as one bash script (a user's interactive shell on
    Debian; C{time} is a bash keyword), with the quick start's C{.venv/bin/netd}
    standing for this test's netd; its exit status, standard output and error.
    """
    script = block.replace(".venv/bin/netd", shlex.join(netdCommand()))
    done = subprocess.run(
        ["bash", "-c", script],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dict(os.environ, HOME=str(home)),
        cwd=cwd,
        timeout=COMMAND_TIMEOUT,
    )
    return done.returncode, done.stdout, done.stderr


@usesEmbeddedDefaultPorts
def test_tourWorksAsWritten(tmp_path: Path) -> None:
    """
    The five-minute tour, run as written after the quick start's netd run: its control API calls answer, the echo is slowed by the fault and then not, its config checks, and netd run on it writes the ports file.
    """
    for tool in ("bash", "curl", "socat"):
        requireTool(tool)
    requireEmbeddedDefaultPorts("the tour runs against netd on the embedded default config")
    shell = tourBlocks("sh")
    [config] = tourBlocks("toml")
    [look] = [block for block in shell if "/metrics" in block]
    [faults] = [block for block in shell if "/faults" in block]
    [check] = [block for block in shell if "netd check" in block]
    home = tmp_path / "home"
    home.mkdir()
    netd = startDefault(home, 0)
    try:
        status, out, err = runTourBlock(look, home, tmp_path)
        assert status == 0 and '"echo"' in out and "netd_build_info" in out, (out, err)
        status, out, err = runTourBlock(faults, home, tmp_path)
        assert status == 0, (out, err)
        assert out.count("hello") == 2, out
        slowed, quick = [
            int(minutes) * 60 + float(seconds)
            for minutes, seconds in re.findall(r"^real\s+(\d+)m([\d.]+)s$", err, re.MULTILINE)
        ]
        assert slowed >= 0.9 and quick < 0.5, err
    finally:
        assert netd.stop() == 0, netd.log()
    (tmp_path / "my.toml").write_text(config)
    checkLine, runLine = check.strip().splitlines()
    status, out, err = runTourBlock(checkLine, home, tmp_path)
    assert status == 0 and out.startswith("# my.toml: valid"), (out, err)
    # The server adds --ports-file with its own path, which in tmp_path is the
    # tour's ports.json again: the line runs as written and writes that file.
    ran = NetdServer(
        None,
        tmp_path,
        launcher=[
            "bash",
            "-c",
            "exec " + runLine.replace(".venv/bin/netd", shlex.join(netdCommand())) + ' "$@"',
            "bash",
        ],
        environment={"HOME": str(home), "XDG_STATE_HOME": None},
        cwd=tmp_path,
    )
    assert ran.portsFile == tmp_path / "ports.json" and runLine.endswith("--ports-file ports.json"), runLine
    try:
        ran.start()
        assert [entry["transport"] for entry in ran.services["lines"]] == ["tcp"]
    finally:
        ran.kill()


# The test set-up and the quick start's .venv.


STUB = """\
#!/bin/sh
# Stands for python3, a venv's python or apt-get: records how it was called.
echo "$0 $*" >> "$SETUP_LOG"
if [ "${1:-}" = "-m" ] && [ "${2:-}" = "venv" ]; then
    mkdir -p "$3/bin"
    cp "$0" "$3/bin/python"
fi
exit 0
"""


def runSetup(tmp_path: Path, *args: str) -> list[str]:
    """
    Run a copy of the real setup.sh in C{tmp_path} with python3 and apt-get
    replaced by stubs that record each call (so that it takes milliseconds
    and installs nothing), and return the calls, paths relative to the copy.
    """
    checkout = tmp_path / "checkout"
    stubs = tmp_path / "stubs"
    checkout.mkdir(exist_ok=True)
    stubs.mkdir(exist_ok=True)
    shutil.copy(ROOT / "setup.sh", checkout / "setup.sh")
    for name in ("python3", "apt-get"):
        stub = stubs / name
        stub.write_text(STUB)
        stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "setup.log"
    log.write_text("")
    environment = dict(os.environ, PATH=f"{stubs}:{os.environ['PATH']}", SETUP_LOG=str(log))
    done = subprocess.run(
        ["sh", str(checkout / "setup.sh"), *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        env=environment,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    return [line.replace(f"{checkout}/", "").replace(f"{stubs}/", "") for line in log.read_text().splitlines()]


def test_setupMakesAPlainInstall(tmp_path: Path) -> None:
    """
    ./setup.sh (the quick start) installs netd into .venv as a user would, pip install . with no test extra, and makes no test environment.
    """
    calls = runSetup(tmp_path)
    assert "python3 -m venv .venv" in calls
    installs = [call for call in calls if " -m pip install " in call]
    assert installs == ["./.venv/bin/python -m pip install -q --disable-pip-version-check ."], calls
    assert not (tmp_path / "checkout" / ".venv-test").exists()


def test_testSetupLeavesTheQuickStartInstall(tmp_path: Path) -> None:
    """
    ./setup.sh --test (run by ./test.sh) installs netd editable with the test extra and the test plugin into .venv-test and never runs .venv's Python, so the quick start's install stays as it was.
    """
    runSetup(tmp_path)
    venv = tmp_path / "checkout" / ".venv"
    before = sorted((path.relative_to(venv), path.stat().st_mtime_ns) for path in venv.rglob("*"))
    calls = runSetup(tmp_path, "--test")
    assert not any(".venv/" in call or call.endswith(".venv") for call in calls), calls
    assert "python3 -m venv .venv-test" in calls
    installs = [call for call in calls if " -m pip install " in call]
    assert installs == [
        "./.venv-test/bin/python -m pip install -q --disable-pip-version-check -e .[test]",
        "./.venv-test/bin/python -m pip install -q --disable-pip-version-check ./tests/thirdparty",
    ], calls
    assert sorted((path.relative_to(venv), path.stat().st_mtime_ns) for path in venv.rglob("*")) == before


def test_suiteRunsOutsideTheQuickStartVenv() -> None:
    """
    ./test.sh runs the suite with .venv-test's Python, never .venv's, and hands its own arguments to pytest last.
    """
    script = (ROOT / "test.sh").read_text()
    assert "./setup.sh --test" in script
    last = script.rstrip().splitlines()[-1]
    assert last.startswith("exec .venv-test/bin/python -m pytest ") and last.endswith(' "$@"'), last
