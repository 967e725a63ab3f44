"""
Suite-wide settings, for tests/ and the plugins' own tests in plugins/*/tests/.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Iterator

import pytest

NOTHING_COLLECTED = "no tests were collected; check the paths and -k/-m expressions"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """
    Run the session on netd's reactor (L{netd.reactors.epoll}), the one C{netd run}
    uses, so that every in-process test exercises it; pytest-twisted then
    finds it installed and accepts it as the epoll reactor it asks for.
    """
    from netd.reactors.epoll import install

    install()
    _pluginsUnderTheirInstalledNames()


def _pluginsUnderTheirInstalledNames() -> None:
    """
    Make the source folder's names of the built-in plugins (C{plugins},
    C{plugins.echo}, ...) the installed modules (C{netd_plugins},
    C{netd_plugins.echo}, ...).  pytest imports the packages above a test
    module by their path, so a test in plugins/echo/tests/ would otherwise
    load the echo plugin a second time as C{plugins.echo}, with classes of
    its own that netd's are not.
    """
    import netd_plugins

    sys.modules.setdefault("plugins", netd_plugins)
    for module in pkgutil.iter_modules(netd_plugins.__path__):
        sys.modules.setdefault(f"plugins.{module.name}", importlib.import_module(f"netd_plugins.{module.name}"))


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """
    Refuse to report success when nothing was collected: a run that selects no
    test is a broken command line or a broken suite, never a pass.
    """
    if not items:
        raise pytest.UsageError(NOTHING_COLLECTED)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """
    The same refusal in the controller of a parallel run (pytest-xdist), which
    collects nothing itself and, when its workers selected no test, would
    report "no tests ran" (exit 5).
    """
    if session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.config.get_terminal_writer().line(f"ERROR: {NOTHING_COLLECTED}", red=True)
        session.exitstatus = pytest.ExitCode.USAGE_ERROR


@pytest.fixture(autouse=True)
def _debugLinesOff(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Start every test with netd's per-connection debug lines off, whatever an
    earlier test configured (L{netd.logs.debugEnabled} is process-wide).
    """
    from netd import logs

    monkeypatch.setattr(logs, "debugEnabled", False)


@pytest.fixture(autouse=True, scope="session")
def _stateDirOutsideHome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """
    Give the session's in-process netds a state directory of their own
    (C{$XDG_STATE_HOME}), so that the control API's token and development
    certificates are never written into the user's home.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("STATE_DIRECTORY", raising=False)
        patch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
        yield


@pytest.fixture(params=["pump", "twisted"])
def tlsRecordPath(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """
    Run a TLS test on both record paths: the record pump
    (L{netd.tls.pump.RecordPump}), and Twisted's public TLSMemoryBIOProtocol
    path that netd falls back to when the pump's start-up check fails
    (forced here by the check's internal switch).
    """
    from twisted.logger import capturedLogs

    from netd.tls import pump

    if request.param == "twisted":
        monkeypatch.setenv(pump.CANARY_SWITCH, "fail")
    monkeypatch.setattr(pump.RECORD_PUMP, "_alive", None)
    with capturedLogs():  # the fallback's one warning, which tests/unit/test_tls_pump.py proves
        assert pump.RECORD_PUMP.alive() is (request.param == "pump")
    yield request.param
