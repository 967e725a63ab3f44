"""
Suite-wide settings.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """
    Run the session on netd's reactor (L{netd.reactor}), the one C{netd run}
    uses, so that every in-process test exercises it; pytest-twisted then
    finds it installed and accepts it as the epoll reactor it asks for.
    """
    from netd.reactor import install

    install()


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """
    Refuse to report success when nothing was collected: a run that selects no
    test is a broken command line or a broken suite, never a pass.
    """
    if not items:
        raise pytest.UsageError("no tests were collected; check the paths and -k/-m expressions")


@pytest.fixture(autouse=True)
def _debugLinesOff(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Start every test with netd's per-connection debug lines off, whatever an
    earlier test configured (L{netd.logs.debugEnabled} is process-wide).
    """
    from netd import logs

    monkeypatch.setattr(logs, "debugEnabled", False)
