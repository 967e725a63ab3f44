"""
The package tree has the shape docs/architecture.md describes: no import
circles among netd's and the built-in plugins' modules, and every module in
one of the documented folders or one of the documented top-level modules.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PACKAGES = {"netd": ROOT / "netd", "netd_plugins": ROOT / "plugins"}
"""
The import name of each source folder checked (plugins/ installs as netd_plugins).
"""

ALIASES = {"plugins": "netd_plugins"}
"""
Other names a source file may import a checked package by.
"""


def moduleFiles(packages: dict[str, Path]) -> dict[str, Path]:
    """
    Every module of C{packages} (import name: source folder), by its dotted
    name; the plugins' own tests are not part of the import graph.
    """
    modules: dict[str, Path] = {}
    for package, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if "tests" in parts or any(part.startswith("test_") for part in parts):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def _imported(node: ast.Import | ast.ImportFrom, module: str, isPackage: bool) -> Iterator[tuple[str, list[str]]]:
    """
    What one import statement names: each imported module with the names
    taken from it (for C{from M import a, b}, which may be submodules of M).
    """
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name, []
        return
    base = node.module or ""
    if node.level:
        package = module.split(".") if isPackage else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([base] if base else [])])
    yield base, [alias.name for alias in node.names]


def importGraph(packages: dict[str, Path] = PACKAGES, aliases: dict[str, str] = ALIASES) -> dict[str, set[str]]:
    """
    Which module of C{packages} imports which, from the source: every import
    statement (at module level, inside a function, under C{TYPE_CHECKING}:
    each is a dependency), relative ones resolved, and C{from M import x}
    counted as an import of M.x when that is a module.
    """
    modules = moduleFiles(packages)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target, names in _imported(node, name, path.name == "__init__.py"):
                head, _, rest = target.partition(".")
                target = ".".join(filter(None, (aliases.get(head, head), rest)))
                found = [f"{target}.{each}" for each in names if f"{target}.{each}" in modules]
                if target in modules and len(found) < len(names) or not names:
                    found.append(target)
                graph[name].update(found)
    for name in graph:
        graph[name].discard(name)
        graph[name] &= modules.keys()
    return graph


def circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """
    The import circles: every set of modules that all reach each other (a
    strongly connected component of more than one module), by Tarjan's
    algorithm without recursion.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    onStack: set[str] = set()
    found: list[frozenset[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        onStack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    onStack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in onStack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    onStack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def shortestCircle(graph: dict[str, set[str]], component: frozenset[str]) -> list[str]:
    """
    One shortest path from the component's first module back to itself
    inside the component, to show how the circle closes.
    """
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node] & component):
            if child == start:
                return [*paths[node], start]
            if child not in paths:
                paths[child] = [*paths[node], child]
                queue.append(child)
    raise AssertionError(f"{sorted(component)} is not a circle")


def describe(graph: dict[str, set[str]], circle: frozenset[str]) -> str:
    """
    A circle for a failure message: its modules and one way it closes.
    """
    return f"{sorted(circle)}: {' -> '.join(shortestCircle(graph, circle))}"


def circleProblems(graph: dict[str, set[str]]) -> list[str]:
    """
    Each import circle of C{graph}, described for a failure message.
    """
    return [f"import circle {describe(graph, circle)}" for circle in circles(graph)]


def test_noImportCircles() -> None:
    """
    No modules of netd or of the built-in plugins import each other in a circle (imports under TYPE_CHECKING and inside functions count too).
    """
    problems = circleProblems(importGraph())
    assert not problems, "\n".join(problems)


def writeTree(root: Path, files: dict[str, str]) -> None:
    """
    Write a source tree of C{files} (relative path: source) under C{root}.
    """
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)


def test_graphFollowsEveryKindOfImport(tmp_path: Path) -> None:
    """
    The import graph has an edge for plain, from-, relative, in-function and aliased imports, and from M import x points at M.x when that is a module and at M otherwise.
    """
    writeTree(
        tmp_path / "pkg",
        {
            "__init__.py": "from pkg.sub import thing\n",
            "a.py": "import pkg.b\n",
            "b.py": "def later():\n    from . import c\n",
            "c.py": "from .sub.deep import value\n",
            "sub/__init__.py": "thing = 1\n",
            "sub/deep.py": "from ..a import name\nfrom ... import outside\n",
            "d.py": "from alias.a import x\nimport os\n",
        },
    )
    graph = importGraph({"pkg": tmp_path / "pkg"}, {"alias": "pkg"})
    assert graph == {
        "pkg": {"pkg.sub"},
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.c"},
        "pkg.c": {"pkg.sub.deep"},
        "pkg.sub": set(),
        "pkg.sub.deep": {"pkg.a"},
        "pkg.d": {"pkg.a"},
    }


def test_circlesAreFound() -> None:
    """
    Every strongly connected set of modules is a circle, reported with one shortest way it closes; modules that only lead into a circle are not part of it.
    """
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d", "a"}, "f": {"a"}}
    assert sorted(sorted(circle) for circle in circles(graph)) == [["a", "b", "c"], ["d", "e"]]
    assert shortestCircle(graph, frozenset({"a", "b", "c"})) == ["a", "b", "c", "a"]
    assert sorted(circleProblems(graph)) == [
        "import circle ['a', 'b', 'c']: a -> b -> c -> a",
        "import circle ['d', 'e']: d -> e -> d",
    ]
    graph["c"] = set()
    graph["e"] = {"a"}
    assert circleProblems(graph) == []


ARCHITECTURE = ROOT / "docs" / "architecture.md"

TOP_LEVEL_MODULES = {
    "__init__",
    "__main__",
    "interfaces",
    "bases",
    "registry",
    "metrics",
    "events",
    "logs",
    "canary",
    "words",
}
"""
The modules that live in netd/ itself, beside the folders.
"""


def documentedLayout() -> tuple[set[str], set[str]]:
    """
    The folders (C{### `netd/NAME/`} headings of "The folders") and the
    top-level modules (the C{- `NAME.py`} items of "Top-level modules") that
    docs/architecture.md describes.
    """
    text = ARCHITECTURE.read_text()
    folders = text.split("## The folders", 1)[1].split("\n## ", 1)[0]
    modules = text.split("## Top-level modules", 1)[1].split("\n## ", 1)[0]
    return (
        set(re.findall(r"^### `netd/(\w+)/`$", folders, re.MULTILINE)),
        set(re.findall(r"^- `(\w+)\.py`", modules, re.MULTILINE)),
    )


def test_treeMatchesTheDocumentedLayout() -> None:
    """
    Every module under netd/ is in a folder docs/architecture.md describes or is one of the documented top-level modules, and every documented folder and module exists.
    """
    folders, modules = documentedLayout()
    assert modules == TOP_LEVEL_MODULES
    package = ROOT / "netd"
    actualFolders = {path.parent.name for path in package.glob("*/__init__.py")}
    actualModules = {path.stem for path in package.glob("*.py")}
    assert actualFolders == folders, (
        f"netd/ has the folders {sorted(actualFolders)}; docs/architecture.md describes {sorted(folders)}"
    )
    assert actualModules == modules, (
        f"netd/ has the top-level modules {sorted(actualModules)}; docs/architecture.md lists {sorted(modules)}"
    )
    strays = [
        str(path.relative_to(ROOT))
        for path in package.rglob("*.py")
        if path.parent != package and path.relative_to(package).parts[0] not in folders
    ]
    assert not strays, f"modules outside the documented folders: {strays}"
