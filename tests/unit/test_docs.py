"""
The documentation is tested: every TOML block in the README, in the pages of
docs/ and in each plugin's page (plugins/*/README.md), and every config file
under config/, is loaded through netd.config.spec, so an example cannot drift from
what netd accepts; every relative link and anchor of those pages resolves.

A block preceded by the line C{<!-- invalid -->} shows a mistake on
purpose; it must still be TOML, and netd must refuse it.
"""

from __future__ import annotations

import re
import textwrap
import tomllib
from pathlib import Path

import attrs
import pytest

from netd.config.options import ConfigError, schemaFields
from netd.config.spec import DaemonSpec, ServiceEnvelope, loadConfig, parseConfig
from netd.registry import PluginRegistry, discoverPlugins
from netd.stream.framing import FRAMINGS

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CONFIG_DIR = ROOT / "config"
EXAMPLES_DIR = CONFIG_DIR / "examples"
INVALID_MARKER = "<!-- invalid -->"


@attrs.frozen
class TomlBlock:
    """
    One fenced C{toml} block of a Markdown file.

    @ivar line: the line number of its opening fence.
    @ivar invalid: whether the line before it (blank lines aside) is the
        C{<!-- invalid -->} marker.
    """

    line: int
    text: str
    invalid: bool


def tomlBlocks(markdown: str) -> list[TomlBlock]:
    """
    Every fenced block whose info string is C{toml}, in order; an unclosed block
    runs to the end of the file (and then fails to load).
    """
    lines = markdown.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if not stripped.startswith("```"):
            i += 1
            continue
        info = stripped[3:].strip().lower()
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if info.split()[:1] == ["toml"]:
            previous = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            text = textwrap.dedent("\n".join(lines[i + 1 : end]))
            blocks.append(TomlBlock(line=i + 1, text=text, invalid=previous == INVALID_MARKER))
        i = end + 1
    return blocks


DOC_PAGES = [README, *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "plugins").glob("*/README.md"))]
DOC_BLOCKS = [
    (page.relative_to(ROOT).as_posix(), block)
    for page in DOC_PAGES
    if page.exists()
    for block in tomlBlocks(page.read_text(encoding="utf-8"))
]
README_BLOCKS = [block for page, block in DOC_BLOCKS if page == "README.md"]
CONFIG_FILES = sorted(CONFIG_DIR.rglob("*.toml"))


def blockId(located: tuple[str, TomlBlock]) -> str:
    """
    A test id naming where the block is: C{README.md:99} or C{docs/security.md:99-invalid}.
    """
    page, block = located
    return f"{page}:{block.line}" + ("-invalid" if block.invalid else "")


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    """
    The installed plugins (echo, reverse), found once for the module.
    """
    return discoverPlugins()


def test_readmeHasTomlBlocks() -> None:
    """
    The README exists and has at least one valid TOML block, so the block tests cannot pass on nothing.
    """
    assert README.exists(), f"{README} is missing"
    assert [b for b in README_BLOCKS if not b.invalid], "README.md has no ```toml block that should load"


def test_configFilesExist() -> None:
    """
    config/ has the default config and at least one example, so the file tests cannot pass on nothing.
    """
    assert CONFIG_DIR / "netd.toml" in CONFIG_FILES
    assert [p for p in CONFIG_FILES if p.parent == EXAMPLES_DIR], f"{EXAMPLES_DIR} has no *.toml file"


def test_defaultConfigIsTheEmbeddedOne() -> None:
    """
    config/netd.toml is a symlink to the embedded default netd/config/default.toml, so they cannot differ.
    """
    link = CONFIG_DIR / "netd.toml"
    assert link.is_symlink()
    assert link.resolve() == (ROOT / "netd" / "config" / "default.toml").resolve()


def checkBlock(block: TomlBlock, registry: PluginRegistry, page: str = "README.md") -> None:
    """
    Fail unless the block is TOML that netd accepts or, if marked invalid, refuses.
    """
    data = tomllib.loads(block.text)
    source = f"{page}:{block.line}"
    if block.invalid:
        with pytest.raises(ConfigError) as info:
            parseConfig(data, source, registry)
        assert info.value.problems
    else:
        config = parseConfig(data, source, registry)
        assert config.services or config.daemon.toxiproxy.address is not None


@pytest.mark.parametrize("located", DOC_BLOCKS, ids=blockId)
def test_docsBlock(located: tuple[str, TomlBlock], registry: PluginRegistry) -> None:
    """
    Each TOML block of the README, docs/ and the plugins' pages is a config netd accepts, or, marked invalid, TOML that netd refuses.
    """
    page, block = located
    checkBlock(block, registry, page)


GOOD_TOML = '[[services]]\nname = "e"\nplugin = "echo"\nlisten = ["tcp:0"]\n'
BAD_TOML = '[[services]]\nname = "e"\nplugin = "ecko"\nlisten = ["tcp:0"]\n'


def test_invalidMarkerIsEnforced(registry: PluginRegistry) -> None:
    """
    A block marked invalid fails the docs test if netd accepts it, and an unmarked bad block fails it too.
    """
    checkBlock(TomlBlock(line=1, text=BAD_TOML, invalid=True), registry)
    checkBlock(TomlBlock(line=1, text=GOOD_TOML, invalid=False), registry)
    with pytest.raises(pytest.fail.Exception):
        checkBlock(TomlBlock(line=1, text=GOOD_TOML, invalid=True), registry)
    with pytest.raises(ConfigError):
        checkBlock(TomlBlock(line=1, text=BAD_TOML, invalid=False), registry)
    with pytest.raises(tomllib.TOMLDecodeError):
        checkBlock(TomlBlock(line=1, text="[services", invalid=True), registry)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_configFile(path: Path, registry: PluginRegistry) -> None:
    """
    Each config file shipped under config/ loads through netd.config.spec without problems.
    """
    config = loadConfig(str(path), registry)
    assert config.source == str(path)
    assert any(s.enabled for s in config.services)


def test_blockExtraction() -> None:
    """
    tomlBlocks finds toml fences only, with their line, dedented text and the invalid marker.
    """
    markdown = textwrap.dedent(
        """\
        Intro.

        ```toml
        a = 1
        ```

        <!-- invalid -->

        ```toml
        b = 2
        ```

        ```
        c = 3
        ```

        - a list item:

          ```TOML
          d = 4
          ```
        """
    )
    assert tomlBlocks(markdown) == [
        TomlBlock(line=3, text="a = 1", invalid=False),
        TomlBlock(line=9, text="b = 2", invalid=True),
        TomlBlock(line=19, text="d = 4", invalid=False),
    ]


@pytest.mark.parametrize(
    ("page", "section", "keys"),
    [
        pytest.param("docs/configuration.md", "## `[daemon]`", list(schemaFields(DaemonSpec)), id="daemon-keys"),
        pytest.param(
            "docs/configuration.md", "## `[[services]]`", list(schemaFields(ServiceEnvelope)), id="service-keys"
        ),
        pytest.param("docs/listen.md", "## Framings", list(FRAMINGS), id="framings"),
    ],
)
def test_referenceComplete(page: str, section: str, keys: list[str]) -> None:
    """
    The reference tables of the docs list every daemon key, every service key and every framing.
    """
    text = (ROOT / page).read_text(encoding="utf-8")
    start = text.index(section)
    end = text.find("\n#", start + len(section))
    body = text[start : end if end != -1 else len(text)]
    missing = [key for key in keys if f"| `{key}` |" not in body]
    assert missing == []


@pytest.mark.parametrize("plugin", sorted(p.parent.name for p in (ROOT / "plugins").glob("*/__init__.py")))
def test_pluginHasItsPage(plugin: str, registry: PluginRegistry) -> None:
    """
    Each built-in plugin's folder has its page, README.md, titled with the plugin's name, and its table lists every option of the plugin.
    """
    readme = ROOT / "plugins" / plugin / "README.md"
    assert readme.is_file()
    [name] = [n for n, found in registry.plugins.items() if found.source == f"built-in netd_plugins.{plugin}"]
    text = readme.read_text(encoding="utf-8")
    assert text.startswith(f"# {name}\n")
    missing = [key for key in schemaFields(registry.plugins[name].plugin.optionsType) if f"`{key}`" not in text]
    assert missing == []


def headingAnchors(markdown: str) -> set[str]:
    """
    The anchors GitHub gives the headings of a Markdown page: lower case,
    punctuation but hyphens and underscores dropped, spaces made hyphens.
    """
    anchors = set()
    fenced = False
    for line in markdown.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


LINK = re.compile(r"\]\(([^)\s]*)\)")


@pytest.mark.parametrize("page", [p for p in DOC_PAGES if p.exists()], ids=lambda p: str(p.relative_to(ROOT)))
def test_docsLinksResolve(page: Path) -> None:
    """
    Every relative link of a docs page names a file of the checkout and, with a #fragment, one of that file's headings.
    """
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(target)
        elif fragment and linked.suffix == ".md" and fragment not in headingAnchors(linked.read_text(encoding="utf-8")):
            broken.append(target)
    assert broken == []


def test_frontPageLinksEveryPage() -> None:
    """
    The README, the front page, links to every page of docs/ and every plugin's page, so that each is one click from where a newcomer starts.
    """
    linked = {
        (ROOT / target.partition("#")[0]).resolve()
        for target in LINK.findall(README.read_text(encoding="utf-8"))
        if "://" not in target
    }
    pages = {page.resolve() for page in DOC_PAGES if page != README}
    assert sorted(str(p.relative_to(ROOT)) for p in pages - linked) == []
