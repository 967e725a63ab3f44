"""
The examples of the docs that are API calls or messages are checked against
netd: every C{curl} line's method and path is one the control API's OpenAPI
description (netd/daemon/openapi.py) has, and every config-error message the pages
show is one netd prints for such a config, word for word.

A message is shown either in an invalid TOML block, as a comment
C{# KEY.PATH: message} on the line at fault, or in a plain code block; those
of plain blocks are listed in L{SHOWN_MESSAGES} with the config that makes
them, and a test checks that the page still shows each.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from netd.config.options import ConfigError, Problem, renderPath
from netd.config.spec import parseConfig
from netd.daemon.cli import startProblems
from netd.daemon.openapi import openapiDocument
from netd.faults.spec import decodeFault
from netd.registry import PluginRegistry, discoverPlugins

from .test_docs import DOC_PAGES, ROOT, tomlBlocks

API_ORIGIN = "http://127.0.0.1:8053"
TOXIPROXY_ORIGIN = "http://127.0.0.1:8474"
"""
The toxiproxy API's documented address: its curl lines are checked against
its own routes (tests/unit/test_toxiproxy_docs.py), not the control API's.
"""


def curlLines() -> list[tuple[str, str]]:
    """
    Every curl command of the docs that calls a URL (in code blocks and inline
    code), with the page and line it is on; a command continued with a
    backslash is joined.
    """
    found = []
    for page in DOC_PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            for command in re.findall(r"(?:^|[`$(]\s*)(curl\s[^`#|]*)", line.strip().lstrip("$ ")):
                following = number
                while command.rstrip().endswith("\\") and following < len(lines):
                    command = command.rstrip()[:-1] + " " + lines[following].strip()
                    following += 1
                if "http" in command and TOXIPROXY_ORIGIN not in command:
                    found.append((f"{page.relative_to(ROOT)}:{number}", command.strip()))
    return found


CURLS = curlLines()


def methodAndPath(command: str) -> tuple[str, str]:
    """
    The HTTP method (C{-X}, else GET) and the URL path of a curl command.
    """
    words = shlex.split(command.replace("$(", "(").replace('"$AUTH"', "AUTH").replace('"$JSON"', "JSON"))
    method = "GET"
    url = None
    for index, word in enumerate(words):
        if word == "-X":
            method = words[index + 1]
        elif word.startswith("http://"):
            url = word
    assert url is not None, command
    return method, urlsplit(url).path


def openapiRoutes() -> list[tuple[re.Pattern[str], set[str]]]:
    """
    Each path template of the OpenAPI description as a pattern, with its methods.
    """
    routes = []
    for template, item in openapiDocument()["paths"].items():
        pattern = re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)) + "$")
        routes.append((pattern, {method.upper() for method in item if method in ("get", "put", "post", "delete")}))
    return routes


def test_docsHaveCurlLines() -> None:
    """
    The docs have curl lines of every method, so the check cannot pass on nothing.
    """
    methods = {methodAndPath(command)[0] for _, command in CURLS}
    assert methods == {"GET", "PUT", "POST", "DELETE"}


@pytest.mark.parametrize(("where", "command"), CURLS, ids=[where for where, _ in CURLS])
def test_curlLineIsInTheAPI(where: str, command: str) -> None:
    """
    Each curl line of the docs calls a method and path that the OpenAPI description has.
    """
    method, path = methodAndPath(command)
    allowed = set().union(*(methods for pattern, methods in openapiRoutes() if pattern.match(path)))
    assert method in allowed, (method, path, sorted(allowed))


def test_curlCheckRefusesUnknownCalls() -> None:
    """
    A curl line with a path or a method the API does not have fails the check.
    """
    for command in ("curl -s http://127.0.0.1:8053/nosuch", "curl -s -X DELETE http://127.0.0.1:8053/metrics"):
        with pytest.raises(AssertionError):
            test_curlLineIsInTheAPI("example", command)


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    """
    The installed plugins (the test plugin reverse included), found once for the module.
    """
    return discoverPlugins()


def configProblems(data: dict[str, Any], registry: PluginRegistry) -> list[str]:
    """
    The problems netd finds in a config, each as C{KEY.PATH: message}.
    """
    with pytest.raises(ConfigError) as info:
        parseConfig(data, "netd.toml", registry)
    return [f"{renderPath(p.path)}: {p.message}" if p.path else p.message for p in info.value.problems]


def faultProblems(table: dict[str, Any]) -> list[str]:
    """
    The problems the control API's faults table finds in one fault of a PUT body, each as C{KEY.PATH: message}.
    """
    problems: list[Problem] = []
    decodeFault(table, ("faults", 0), problems)
    return [f"{renderPath(p.path)}: {p.message}" for p in problems]


ECHO = {"name": "echo", "plugin": "echo", "listen": ["tcp:0:interface=127.0.0.1"]}

SHOWN_MESSAGES: list[tuple[str, str, Any]] = [
    (
        "docs/configuration.md",
        "services[0].listen[1]: plugin 'reverse' does not serve datagrams; it serves stream ('udp:7007')",
        lambda r: configProblems(
            {"services": [{"name": "r", "plugin": "reverse", "listen": ["tcp:7007", "udp:7007"]}]}, r
        ),
    ),
    (
        "docs/configuration.md",
        "services[1].max_conections: unknown key; did you mean 'max_connections'?",
        lambda r: configProblems({"services": [ECHO, {**ECHO, "name": "e2", "max_conections": 10}]}, r),
    ),
    (
        "docs/control-api.md",
        "daemon.admin: 'tcp:8053' can be reached from other hosts, so the control API needs a token: set admin_token_file to a file holding a secret, or listen on 127.0.0.1, ::1 or a unix: socket",
        lambda r: configProblems({"daemon": {"admin": "tcp:8053"}, "services": [ECHO]}, r),
    ),
    (
        "docs/testing.md",
        "services[0].framming: unknown key; did you mean 'framing'?",
        lambda r: configProblems({"services": [{**ECHO, "framming": "line"}]}, r),
    ),
    (
        "docs/control-api.md",
        "faults[0].ms: -1.0 is out of range; expected 0 to 600000.0",
        lambda r: faultProblems({"type": "latency", "ms": -1}),
    ),
]


@pytest.mark.parametrize(
    ("page", "message", "produce"), SHOWN_MESSAGES, ids=[m.split(":")[0] for _, m, _ in SHOWN_MESSAGES]
)
def test_shownMessageIsNetds(page: str, message: str, produce: Any, registry: PluginRegistry) -> None:
    """
    Each config-error message a page shows in a code block is on that page and is what netd says for such a config.
    """
    assert message in (ROOT / page).read_text(encoding="utf-8")
    assert message in produce(registry)


COMMENTED = re.compile(r"#\s*(\w+(?:\[\d+\]|\.\w+)+: .+)$")


def commentedMessages() -> list[tuple[str, str, str]]:
    """
    The C{# KEY.PATH: message} comments of the invalid TOML blocks of the docs, with the page, line and the block.
    """
    found = []
    for page in DOC_PAGES:
        for block in tomlBlocks(page.read_text(encoding="utf-8")):
            if not block.invalid:
                continue
            for offset, line in enumerate(block.text.splitlines(), 1):
                match = COMMENTED.search(line)
                if match:
                    found.append(
                        (f"{page.relative_to(ROOT)}:{block.line + offset}", match.group(1).strip(), block.text)
                    )
    return found


COMMENTED_MESSAGES = commentedMessages()


def test_docsHaveCommentedMessages() -> None:
    """
    The invalid blocks of the docs show messages in comments, so the check cannot pass on nothing.
    """
    assert len(COMMENTED_MESSAGES) >= 2


@pytest.mark.parametrize(("where", "message", "text"), COMMENTED_MESSAGES, ids=[w for w, _, _ in COMMENTED_MESSAGES])
def test_commentedMessageIsNetds(where: str, message: str, text: str, registry: PluginRegistry) -> None:
    """
    The message an invalid block's comment shows is one netd reports for that block, word for word.
    """
    assert message in configProblems(tomllib.loads(text), registry)


TOKEN_FILE_MESSAGE = (
    "daemon.admin_token_file: '/etc/netd/admin.token' can be read or changed by its group or others (mode 0644); "
    "make it readable by its owner only: chmod 600 /etc/netd/admin.token"
)


@pytest.mark.parametrize("page", ["docs/control-api.md", "docs/configuration.md"])
def test_tokenFileMessageIsNetds(page: str, tmp_path: Path, registry: PluginRegistry) -> None:
    """
    The refusal of a token file others may read, as the pages show it, is what netd check and run say for such a file (with its path).
    """
    text = " ".join((ROOT / page).read_text(encoding="utf-8").split())
    shown = TOKEN_FILE_MESSAGE if page == "docs/control-api.md" else TOKEN_FILE_MESSAGE.split(" (mode")[0]
    assert shown in text
    token = tmp_path / "admin.token"
    token.write_text("s3cret-token-of-the-test\n")
    token.chmod(0o644)
    config = parseConfig(
        {
            "daemon": {
                "admin": "tcp:0:interface=127.0.0.1",
                "admin_token_file": str(token),
                "state_dir": str(tmp_path / "state"),
            },
            "services": [ECHO],
        },
        "netd.toml",
        registry,
    )
    said = [f"{renderPath(p.path)}: {p.message}" for p in startProblems(config)]
    assert TOKEN_FILE_MESSAGE.replace("/etc/netd/admin.token", str(token)) in said
