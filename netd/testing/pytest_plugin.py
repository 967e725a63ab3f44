"""
netd's pytest plugin, registered through the C{pytest11} entry point so that
installing netd is enough.

Two ways to get a netd:

  - C{netd_server} starts a netd of its own for a test on the config the test
    gives, and stops it afterwards (a process start per call);
  - C{netd_session} is one netd for the whole session (one per pytest-xdist
    worker), started on first use with a control API and no service, on which
    C{netd_service} creates services for one test through the control API's
    runtime services and removes them after it.  What a test changes of a
    service that outlives it (faults, DNS scripts and records, the event log)
    is put back after the test, so that tests stay independent.

A failed test's report shows what its netds printed: all of a C{netd_server}'s
output, and the session netd's output during the test.  C{-p no:netd} turns
the plugin off.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from netd.testing.harness import AdminClient, AdminError, NetdServer

_SERVERS = pytest.StashKey[list[NetdServer]]()
"""
The netds a test started, for its failure report.
"""

_SESSION_WINDOW = pytest.StashKey[tuple[NetdServer, int]]()
"""
The session netd a test used and how much it had printed when the test
began, for the failure report.
"""

SESSION_FIXTURE = "netd_session"
"""
The session netd's fixture: a test whose fixtures reach it gets its
services put back afterwards and its log window in a failure report.
"""

NAME_STEM_LENGTH = 60
"""
How much of a test's node ID (sanitized) names its services, at most.
"""

DEFAULT_LISTEN = ["tcp:0:interface=127.0.0.1"]
"""
Where a service of L{netd_service} listens when its table has no C{listen}.
"""


def serviceStem(nodeid: str) -> str:
    """
    The start of the names of a test's services: its node ID without the
    file's folders, each run of characters other than letters, digits, C{_},
    C{.} and C{-} made one C{-} (its end when long), and a short hash of the
    whole node ID, so that two tests never share a stem.
    """
    path, separator, test = nodeid.partition("::")
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.rsplit("/", 1)[-1] + separator + test).strip("-")
    digest = hashlib.sha256(nodeid.encode("utf-8")).hexdigest()[:8]
    return f"{readable[-NAME_STEM_LENGTH:].lstrip('-')}-{digest}"


def _optionalTable(admin: AdminClient, service: str, table: str) -> dict[str, Any] | None:
    """
    A plugin's runtime table of C{service}, or L{None} when its plugin has
    no such table.
    """
    path = f"/services/{quote(service, safe='')}/{table}"
    status, answer = admin.exchange("GET", path)
    if status == 404:
        return None
    if status >= 400:
        raise AdminError("GET", path, status, answer)
    result: dict[str, Any] = answer
    return result


@dataclass(frozen=True)
class ServiceState:
    """
    What a test may change of a service that outlives it (one a session or
    module fixture made), as it was before the test; L{restore} puts it back
    and empties the event log.

    @ivar scripts: a DNS proxy's scripted answers; L{None} for a plugin without.
    @ivar records: a DNS proxy's static records; L{None} for a plugin without.
    """

    name: str
    faults: list[dict[str, Any]]
    scripts: list[dict[str, Any]] | None
    records: dict[str, Any] | None

    @classmethod
    def read(cls, admin: AdminClient, name: str) -> ServiceState:
        """
        The state of service C{name} now.
        """
        scripts = _optionalTable(admin, name, "scripts")
        records = _optionalTable(admin, name, "records")
        return cls(
            name=name,
            faults=admin.faults(name),
            scripts=None if scripts is None else scripts["scripts"],
            records=None if records is None else records["records"],
        )

    def restore(self, admin: AdminClient) -> None:
        """
        Put the faults (their schedules counting afresh), scripts and records
        back as they were, and empty the event log.
        """
        if self.faults:
            admin.setFaults(self.name, self.faults)
        else:
            admin.clearFaults(self.name)
        if self.scripts is not None:
            admin.setScripts(self.name, self.scripts)
        if self.records is not None and admin.records(self.name) != self.records:
            table = admin.deleteRecords(self.name)["records"]
            extra = [name for name in table if name not in self.records]
            if extra:
                admin.deleteRecords(self.name, *extra)
            if self.records:
                admin.setRecords(self.name, self.records)
        admin.clearEvents(self.name)


class NetdService:
    """
    One service on the session's netd, made for one test by C{netd_service}:
    where it listens, its runtime tables and its counters.
    """

    def __init__(self, server: NetdServer, name: str) -> None:
        """
        @param server: the netd the service runs on.
        @param name: the service's name there.
        """
        self.server = server
        self.name = name
        self.removed = False

    def __repr__(self) -> str:
        return f"<NetdService {self.name!r} on netd pid {self.server.pid}>"

    @property
    def admin(self) -> AdminClient:
        """
        The control API client of the netd, for a table this class has no
        method for (C{service.admin.table(service.name, "records")}).
        """
        return self.server.admin

    def addresses(self) -> list[dict[str, Any]]:
        """
        Every address the service listens on, as in the ports file.
        """
        return self.server.addresses(self.name)

    def address(self, transport: str = "tcp") -> tuple[str, int]:
        """
        The C{(host, port)} of its first address of C{transport} (C{"tcp"} or C{"udp"}).
        """
        return self.server.address(self.name, transport)

    def endpoint(self, transport: str = "tcp") -> str:
        """
        Its first address of C{transport} as a client endpoint string
        (C{tcp:127.0.0.1:PORT}), e.g. the C{upstream} of another proxy.
        """
        host, port = self.address(transport)
        return f"{transport}:{host}:{port}"

    def report(self) -> dict[str, Any]:
        """
        Its entry of C{GET /services}: addresses, counters, status.
        """
        return self.admin.service(self.name)

    @property
    def counters(self) -> dict[str, Any]:
        """
        Its counters now (C{connections_accepted}, the proxy's C{upstream_connects}, ...).
        """
        counters: dict[str, Any] = self.report()["counters"]
        return counters

    def faults(self) -> list[dict[str, Any]]:
        """
        The faults it applies now.
        """
        return self.admin.faults(self.name)

    def setFaults(self, faults: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """
        Replace its faults (each a table as in the config's C{faults}).
        """
        return self.admin.setFaults(self.name, faults)

    def clearFaults(self) -> dict[str, Any]:
        """
        Remove its faults.
        """
        return self.admin.clearFaults(self.name)

    def events(
        self, kind: str | None = None, since: int | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """
        Its recent events, oldest first (see L{AdminClient.events}).
        """
        return self.admin.events(self.name, kind=kind, since=since, limit=limit)

    def clearEvents(self) -> dict[str, Any]:
        """
        Empty its event log.
        """
        return self.admin.clearEvents(self.name)

    def setScripts(self, scripts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """
        Replace a DNS proxy's scripted answers.
        """
        return self.admin.setScripts(self.name, scripts)

    def setRecords(self, records: Mapping[str, Any]) -> dict[str, Any]:
        """
        Add or replace a DNS proxy's records of each name given.
        """
        return self.admin.setRecords(self.name, records)

    def remove(self) -> None:
        """
        Stop the service now rather than after the test; its listeners are
        closed when this returns.
        """
        if not self.removed:
            self.server.removeService(self.name)
            self.removed = True


@pytest.fixture
def netd_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., NetdServer]]:
    """
    A function that starts netd on a config (a dict or TOML text; see
    L{NetdServer}) and returns the running L{NetdServer}, once every service
    listens.  Call it as often as the test needs netds; each has its files in
    the test's C{tmp_path}, and every one is stopped at teardown.

    Keyword arguments go to L{NetdServer} (C{environment}, C{launcher},
    C{shutdownTimeout}, C{startTimeout}, ...).
    """
    started: list[NetdServer] = []
    request.node.stash[_SERVERS] = started

    def start(config: Mapping[str, Any] | str, **options: Any) -> NetdServer:
        server = NetdServer(config, directory=tmp_path / f"netd-{len(started)}", **options)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="session")
def netd_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetdServer]:
    """
    One netd for the whole session (for each pytest-xdist worker), started
    when a test first needs it, with a control API on a loopback port and no
    service, and stopped at the end.  Tests add services with
    C{netd_service}; a session or module fixture can add services that
    outlive a test with C{netd_session.addService(table)}, and what a test
    changes of those is put back after it.
    """
    server = NetdServer({}, directory=tmp_path_factory.mktemp("netd-session"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _netd_session_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """
    Around each test whose fixtures reach C{netd_session}: check that the
    session netd still runs, note where its log stands (for the failure
    report), and afterwards, once the test's own services are gone, put back
    what the test changed of the services that outlive it (L{ServiceState}).
    Tests that do not use the session netd pay nothing.
    """
    if SESSION_FIXTURE not in request.fixturenames:
        yield
        return
    server: NetdServer = request.getfixturevalue(SESSION_FIXTURE)
    if not server.running:
        pytest.fail(f"the session's netd (pid {server.pid}) has exited; it printed:\n{server.logTail()}")
    request.node.stash[_SESSION_WINDOW] = (server, server.logOffset())
    admin = server.admin
    before = [ServiceState.read(admin, name) for name in admin.services()["services"]]
    yield
    if server.running:
        present = admin.services()["services"]
        for state in before:
            if state.name in present:
                state.restore(admin)


@pytest.fixture
def netd_service(request: pytest.FixtureRequest, netd_session: NetdServer) -> Iterator[Callable[..., NetdService]]:
    """
    A function that creates a service on the session's netd for this test
    and returns its L{NetdService}: C{netd_service(table, faults=None)}, with
    C{table} a C{[[services]]} table of the config as a dict (without
    C{listen}, it listens on a loopback port of its own; its C{name}, if any,
    only labels it) and C{faults} its initial faults.  The service's name is
    made from the test's node ID.  Every service the test made is removed
    after it, passed or failed.
    """
    created: list[NetdService] = []
    stem = serviceStem(request.node.nodeid)

    def create(table: Mapping[str, Any], faults: Sequence[Mapping[str, Any]] | None = None) -> NetdService:
        label = str(table.get("name") or table.get("plugin") or "service")
        name = f"{stem}-{label}"
        taken = {service.name for service in created}
        count = 1
        while name in taken:
            count += 1
            name = f"{stem}-{label}-{count}"
        full = {"listen": DEFAULT_LISTEN, **table, "name": name}
        if faults is not None:
            full["faults"] = [dict(fault) for fault in faults]
        netd_session.addService(full)
        service = NetdService(netd_session, name)
        created.append(service)
        return service

    try:
        yield create
    finally:
        failures: list[AdminError] = []
        for service in reversed(created):
            if netd_session.running:
                try:
                    service.remove()
                except AdminError as e:
                    failures.append(e)
        if failures:
            raise failures[0]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """
    Add what each netd of a failed test printed to its report, as a section
    beside the captured output (a netd that failed to start says it in the
    error already), and what the session netd printed during the test.
    """
    outcome: Any = yield
    report: pytest.TestReport = outcome.get_result()
    if report.failed:
        for server in item.stash.get(_SERVERS, []):
            if server.report:
                report.sections.append((f"netd log (pid {server.pid}, {server.configFile})", server.logTail()))
        window = item.stash.get(_SESSION_WINDOW, None)
        if window is not None:
            session, offset = window
            report.sections.append(
                (f"netd session log (pid {session.pid}, during this test)", session.logSince(offset))
            )
