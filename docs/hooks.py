"""
MkDocs hooks of netd's docs site (mkdocs.yml names this file).

The site shows the repository as a newcomer meets it: its front page is the
root's README.md, each plugin's page is the README.md of the plugin's own
folder (as CoreDNS keeps one README per plugin, beside the code it
documents), and the changelog and license are the root's files. These files
stay where GitHub and the sdist show them; the hooks add them to the site and
rewrite their links, written relative to the repository, into links of the
site, so that one text serves both and C{mkdocs build --strict} checks every
link and anchor. A hook rather than symlinks under docs/: a new plugin folder
is picked up without a link to remember, the links are made right for the
site's layout (a symlinked README's links would be relative to the wrong
folder), and a checkout without symlink support builds the same site.

A link to another file of the repository (a config example, the systemd
unit) is served as that file, under C{repo/} in the site.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

log = logging.getLogger("mkdocs.plugins.netd")

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
LICENSE = REPO / "LICENSE"

LINK = re.compile(r"\]\(([^)\s]*)\)")


def repoPages() -> dict[str, Path]:
    """
    The pages of the site that live outside docs/, by their URI in the site:
    the front page, every plugin folder's README.md and the changelog.
    """
    pages = {"index.md": REPO / "README.md", "changelog.md": REPO / "CHANGELOG.md"}
    for readme in sorted(REPO.glob("plugins/*/README.md")):
        pages[f"plugins/{readme.parent.name}.md"] = readme
    return pages


def siteUri(target: Path) -> str:
    """
    Where a file of the repository is in the site: docs/ is the site's root,
    the pages of L{repoPages} and the license are pages, any other file is
    copied under C{repo/}.
    """
    if target.is_relative_to(DOCS):
        return target.relative_to(DOCS).as_posix()
    for uri, path in repoPages().items():
        if path == target:
            return uri
    if target == LICENSE:
        return "license.md"
    return "repo/" + target.relative_to(REPO).as_posix()


def outsideLinks(markdown: str, source: Path) -> set[Path]:
    """
    The files outside docs/ that the relative links of a page (at C{source}
    in the repository) name.
    """
    found = set()
    for target in proseLinks(markdown):
        path = target.partition("#")[0]
        if not path or "://" in path or path.startswith("mailto:"):
            continue
        linked = Path(os.path.normpath(source.parent / path))
        if linked.is_file() and linked.is_relative_to(REPO) and not linked.is_relative_to(DOCS):
            found.add(linked)
    return found


def proseLinks(markdown: str) -> list[str]:
    """
    The link targets of a Markdown text outside its fenced code blocks.
    """
    return [target for line in proseLines(markdown) for target in LINK.findall(line)]


def proseLines(markdown: str) -> list[str]:
    """
    The lines of a Markdown text, those inside fenced code blocks replaced by empty ones.
    """
    lines = []
    fenced = False
    for line in markdown.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return lines


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """
    Add the pages that live outside docs/, the license, and every other
    repository file a page links to; warn (an error under --strict) about a
    plugin folder without its README.md.
    """
    for folder in sorted(REPO.glob("plugins/*/__init__.py")):
        if not (folder.parent / "README.md").is_file():
            log.warning("plugin folder %s has no README.md, its page in the docs", folder.parent.relative_to(REPO))
    sources = {Path(f.abs_src_path): f.src_uri for f in files.documentation_pages() if f.abs_src_path}
    for uri, path in repoPages().items():
        files.append(File.generated(config, uri, abs_src_path=str(path)))
        sources[path] = uri
    license = LICENSE.read_text(encoding="utf-8")
    files.append(File.generated(config, "license.md", content=f"# License\n\n```\n{license}```\n"))
    linked: set[Path] = set()
    for path in sources:
        linked |= outsideLinks(path.read_text(encoding="utf-8"), path)
    for target in sorted(linked):
        uri = siteUri(target)
        if uri.startswith("repo/") and files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=str(target)))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files, **kwargs: Any) -> str:
    """
    Rewrite the relative links of a page that lives outside docs/ (and those
    of docs/ pages that leave docs/) from the repository's layout into the site's.
    """
    source = Path(page.file.abs_src_path) if page.file.abs_src_path else None
    if source is None:
        return markdown
    here = posixpath.dirname(page.file.src_uri)

    def rewrite(match: re.Match[str]) -> str:
        target = match.group(1)
        path, hash, fragment = target.partition("#")
        if not path or "://" in path or path.startswith("mailto:"):
            return match.group(0)
        linked = Path(os.path.normpath(source.parent / path))
        if not linked.is_file() or not linked.is_relative_to(REPO):
            return match.group(0)
        return f"]({posixpath.relpath(siteUri(linked), here or '.')}{hash}{fragment})"

    out = []
    for line, prose in zip(markdown.splitlines(), proseLines(markdown), strict=True):
        out.append(LINK.sub(rewrite, line) if prose else line)
    return "\n".join(out) + "\n"
