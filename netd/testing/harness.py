"""
Run netd from tests: L{NetdServer} starts C{netd run} as a child process on a
config given as a dict or as TOML text, on ports the system picks, waits until
every service listens, tells where, and stops it; L{AdminClient} drives its
control API (faults, events, DNS records and scripts).

pytest loads this module (through L{netd.testing.pytest_plugin}) into every test
session wherever netd is installed, so it imports only the standard library
and C{tomli_w}, never the reactor: netd itself runs in the child.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode

import tomli_w

TEST_ADMIN = "tcp:0:interface=127.0.0.1"
"""
Where the control API listens unless the config places it: a port of its own
on loopback, so that any number of netds run at once.
"""

START_TIMEOUT = 20.0
"""
Seconds L{NetdServer.start} waits for every service to listen.
"""

STOP_TIMEOUT = 15.0
"""
Seconds L{NetdServer.stop} waits after SIGTERM before it sends SIGKILL.
"""

REQUEST_TIMEOUT = 10.0
"""
Seconds an L{AdminClient} request may take.
"""

LOG_TAIL = 8192
"""
How much of the end of netd's output an error message quotes, in characters.
"""

_SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
"""
What a test run under systemd inherits that is meant for the test runner, not
for the netd it starts.
"""


class NetdStartError(Exception):
    """
    netd exited, or did not get ready in time, after L{NetdServer.start}; the
    message quotes the end of what it printed (a config error names the key
    path there).
    """


class AdminError(Exception):
    """
    The control API answered with an error status.

    @ivar method: the request's method.
    @ivar path: the request's path, query included.
    @ivar status: the HTTP status.
    @ivar body: the answer: the decoded JSON (C{{"error", "message", ...}},
        with C{"problems"} for a refused body), or the text when it is not JSON.
    """

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.body = body
        if isinstance(body, dict):
            why = str(body.get("message", body))
            problems = body.get("problems")
            if problems:
                why += "".join(f"\n  {problem}" for problem in problems)
        else:
            why = str(body)
        super().__init__(f"{method} {path} answered {status}: {why}")


class _UNIXHTTPConnection(http.client.HTTPConnection):
    """
    HTTP over a unix socket, for C{admin = "unix:PATH"}.
    """

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socketPath = path

    def connect(self) -> None:
        """
        Connect to the socket file instead of a host.
        """
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(self.timeout)
        try:
            client.connect(self.socketPath)
        except OSError:
            client.close()
            raise
        self.sock = client


class AdminClient:
    """
    A blocking client of netd's control API: JSON in, JSON out, an
    L{AdminError} for every error answer.

    Each method names the service by its C{name} in the config.  Getters
    answer the table's content; the methods that change a table answer netd's
    whole JSON answer, which says what the table holds now.
    """

    def __init__(
        self,
        address: Mapping[str, Any],
        token: str | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        """
        @param address: where the API listens, as in the ports file's
            C{"admin"} entry: C{{"transport": "tcp", "host": ..., "port": ...}}
            or C{{"transport": "unix", "path": ...}}.
        @param token: the bearer token (of C{admin_token_file}, or the one
            netd made: the ports file's C{token_file}), if netd has one.
        @param timeout: seconds each request may take.
        """
        self.address = dict(address)
        self.token = token
        self.timeout = timeout

    def _connection(self) -> http.client.HTTPConnection:
        """
        A new connection to the API.
        """
        if "path" in self.address:
            return _UNIXHTTPConnection(str(self.address["path"]), self.timeout)
        return http.client.HTTPConnection(str(self.address["host"]), int(self.address["port"]), timeout=self.timeout)

    def request(self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None) -> Any:
        """
        Send one request and decode the answer.

        @param path: the path, e.g. C{/services/dns/records}.
        @param body: a JSON-ready value to send, or L{None} for no body.
        @param query: query arguments; a list value repeats its key, L{None}
            leaves the key out.
        @return: the decoded JSON answer, or the text when it is not JSON.
        @raise AdminError: for a status of 400 or more.
        """
        given = {key: value for key, value in (query or {}).items() if value is not None}
        if given:
            path += "?" + urlencode(given, doseq=True)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        connection = self._connection()
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        text = raw.decode("utf-8", errors="replace")
        answer: Any = text
        if (response.getheader("Content-Type") or "").startswith("application/json"):
            answer = json.loads(text)
        if response.status >= 400:
            raise AdminError(method, path, response.status, answer)
        return answer

    def _table(self, service: str, table: str) -> str:
        """
        The path of a service's runtime table.
        """
        return f"/services/{quote(service, safe='')}/{table}"

    def health(self) -> dict[str, Any]:
        """
        C{GET /health}.
        """
        answer: dict[str, Any] = self.request("GET", "/health")
        return answer

    def services(self) -> dict[str, Any]:
        """
        C{GET /services}: C{{"ready": ..., "services": {NAME: report}}}.
        """
        answer: dict[str, Any] = self.request("GET", "/services")
        return answer

    def service(self, name: str) -> dict[str, Any]:
        """
        C{GET /services/NAME}: one service's report (addresses, counters, status).
        """
        answer: dict[str, Any] = self.request("GET", f"/services/{quote(name, safe='')}")
        return answer

    def metrics(self) -> str:
        """
        C{GET /metrics}: the Prometheus text.
        """
        answer: str = self.request("GET", "/metrics")
        return answer

    def reload(self) -> dict[str, Any]:
        """
        C{POST /reload}: re-read the config file (rewrite L{NetdServer.configFile} first).
        """
        answer: dict[str, Any] = self.request("POST", "/reload", {})
        return answer

    def table(self, service: str, table: str, **query: Any) -> dict[str, Any]:
        """
        C{GET /services/NAME/TABLE}: a runtime table's whole answer (for
        C{scripts}, the C{"applied"} counts beside the list).
        """
        answer: dict[str, Any] = self.request("GET", self._table(service, table), query=query)
        return answer

    def faults(self, service: str) -> list[dict[str, Any]]:
        """
        The faults a service applies now.
        """
        faults: list[dict[str, Any]] = self.table(service, "faults")["faults"]
        return faults

    def setFaults(self, service: str, faults: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """
        Replace a service's faults (each a table as in the config's C{faults}),
        e.g. C{[{"type": "reset_after", "bytes": 0, "first": 2}]}.
        """
        answer: dict[str, Any] = self.request("PUT", self._table(service, "faults"), {"faults": list(faults)})
        return answer

    def clearFaults(self, service: str) -> dict[str, Any]:
        """
        Remove a service's faults.
        """
        answer: dict[str, Any] = self.request("DELETE", self._table(service, "faults"))
        return answer

    def events(
        self, service: str, kind: str | None = None, since: int | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """
        A service's recent events, oldest first, each with C{seq}, C{time} and
        C{kind} (C{connection}, C{query}, C{fault}).

        @param kind: only events of this kind.
        @param since: only events after this C{seq}.
        @param limit: at most this many.
        """
        events: list[dict[str, Any]] = self.table(service, "events", kind=kind, since=since, limit=limit)["events"]
        return events

    def clearEvents(self, service: str) -> dict[str, Any]:
        """
        Empty a service's event log.
        """
        answer: dict[str, Any] = self.request("DELETE", self._table(service, "events"))
        return answer

    def records(self, service: str) -> dict[str, Any]:
        """
        A DNS proxy's static records now, by name.
        """
        records: dict[str, Any] = self.table(service, "records")["records"]
        return records

    def setRecords(self, service: str, records: Mapping[str, Any]) -> dict[str, Any]:
        """
        Add or replace the records of each name given (the syntax of the
        config's C{records}), e.g. C{{"api.test": {"A": ["192.0.2.7"], "ttl": 5}}}.
        """
        answer: dict[str, Any] = self.request("PUT", self._table(service, "records"), {"records": dict(records)})
        return answer

    def deleteRecords(self, service: str, *names: str) -> dict[str, Any]:
        """
        Remove the records of C{names}; without names, restore the config file's records.
        """
        answer: dict[str, Any] = self.request(
            "DELETE", self._table(service, "records"), query={"name": list(names)} if names else None
        )
        return answer

    def scripts(self, service: str) -> list[dict[str, Any]]:
        """
        A DNS proxy's scripted answers now.
        """
        scripts: list[dict[str, Any]] = self.table(service, "scripts")["scripts"]
        return scripts

    def setScripts(self, service: str, scripts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """
        Replace a DNS proxy's scripted answers (each a table as in the config's
        C{scripts}), e.g. C{[{"name": "api.test", "rcode": "SERVFAIL", "first": 2}]}.
        """
        answer: dict[str, Any] = self.request("PUT", self._table(service, "scripts"), {"scripts": list(scripts)})
        return answer

    def clearScripts(self, service: str) -> dict[str, Any]:
        """
        Put a DNS proxy's scripted answers back as the config file has them.
        """
        answer: dict[str, Any] = self.request("DELETE", self._table(service, "scripts"))
        return answer


class NetdServer:
    """
    One netd running as a child process, for a test.

    C{with NetdServer(config) as server:} (or L{start} and L{stop}) runs
    C{netd run} on C{config}, completed with what a test needs unless it sets
    them itself in C{[daemon]}: C{admin} on a loopback port the system picks,
    C{state_dir} in the server's folder (so C{certificate = "auto"} never
    writes into the user's home) and C{shutdown_timeout = 0} (open
    connections do not delay a stop).  Listen on port 0 (C{tcp:0:interface=127.0.0.1})
    and ask L{address} where.

    Stopping sends SIGTERM, then SIGKILL after C{stopTimeout} seconds, to the
    one process it started; it is safe to call twice, and a failed L{start}
    stops the process before it raises.

    @ivar directory: the folder of the config, ports and log files.
    @ivar configFile: the config file netd runs on; rewrite it and call
        C{admin.reload()} to change a running netd.
    @ivar returncode: netd's exit code once it has stopped, else L{None}.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | str,
        directory: str | os.PathLike[str] | None = None,
        startTimeout: float = START_TIMEOUT,
        stopTimeout: float = STOP_TIMEOUT,
    ) -> None:
        """
        @param config: the config, as the dict C{tomllib} would read or as TOML text.
        @param directory: where to write the config, ports and log files; a
            new temporary folder, removed at L{stop}, when L{None}.
        @param startTimeout: seconds L{start} waits for every service to listen.
        @param stopTimeout: seconds L{stop} waits after SIGTERM.
        """
        self.config = config
        self.startTimeout = startTimeout
        self.stopTimeout = stopTimeout
        self._ownDirectory = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="netd-") if directory is None else directory)
        self.configFile = self.directory / "netd.toml"
        self.portsFile = self.directory / "ports.json"
        self.logFile = self.directory / "netd.log"
        self.returncode: int | None = None
        self.report: dict[str, Any] = {}
        """
        The ports file: C{{"services": {NAME: [address, ...]}, "admin": address}}.
        """
        self.process: subprocess.Popen[bytes] | None = None
        """
        netd's child process, once L{start} has started it.
        """
        self._admin: AdminClient | None = None
        self._finalLog: str | None = None

    def __enter__(self) -> NetdServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        """
        netd's process ID.
        """
        if self.process is None:
            raise RuntimeError("netd has not been started")
        return self.process.pid

    def _configText(self) -> str:
        """
        The config as netd reads it, with the test's C{[daemon]} keys filled in.
        TOML text that does not parse is written as it is, for netd to report
        the syntax error the way it reports every other problem.
        """
        if isinstance(self.config, str):
            try:
                table = tomllib.loads(self.config)
            except tomllib.TOMLDecodeError:
                return self.config
        else:
            table = copy.deepcopy(dict(self.config))
        daemon = table.setdefault("daemon", {})
        daemon.setdefault("admin", TEST_ADMIN)
        daemon.setdefault("state_dir", str(self.directory / "state"))
        daemon.setdefault("shutdown_timeout", 0)
        return tomli_w.dumps(table)

    def start(self) -> NetdServer:
        """
        Start netd and wait until every service listens.

        @raise NetdStartError: netd exited first (a bad config: its message
            is in the error) or was not ready in C{startTimeout} seconds; the
            process is gone either way.
        """
        if self.process is not None:
            raise RuntimeError("this NetdServer was started already; make a new one")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.portsFile.unlink(missing_ok=True)
        self.configFile.write_text(self._configText())
        environment = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_VARIABLES}
        command = [sys.executable, "-m", "netd", "run", "-c", str(self.configFile), "--ports-file", str(self.portsFile)]
        with self.logFile.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=environment
            )
        try:
            self._waitUntilReady()
        except BaseException:
            self.stop()
            raise
        return self

    def _waitUntilReady(self) -> None:
        """
        Wait for the ports file, which netd writes (in one step) once every
        service listens; only one that names the process this server
        started is believed (L{start} removed any left from an earlier run).
        """
        assert self.process is not None
        deadline = time.monotonic() + self.startTimeout
        while self._ownReport() is None:
            if self.process.poll() is not None:
                raise NetdStartError(
                    f"netd exited with code {self.process.returncode} before it was ready "
                    f"(config {self.configFile}); it printed:\n{self.logTail()}"
                )
            if time.monotonic() > deadline:
                raise NetdStartError(
                    f"netd was not ready after {self.startTimeout} seconds (config {self.configFile}); "
                    f"it printed:\n{self.logTail()}"
                )
            time.sleep(0.02)

    def _ownReport(self) -> dict[str, Any] | None:
        """
        The ports file, if the process this server started has written it;
        kept in L{report}.
        """
        assert self.process is not None
        try:
            report = json.loads(self.portsFile.read_text())
        except FileNotFoundError:
            return None
        if not isinstance(report, dict) or report.get("pid") != self.process.pid:
            return None
        self.report = report
        return report

    def logTail(self) -> str:
        """
        The end of what netd has printed (the last L{LOG_TAIL} characters), as
        quoted in error messages and failure reports.
        """
        text = self.log()
        return text if len(text) <= LOG_TAIL else "...\n" + text[-LOG_TAIL:]

    def stop(self) -> int | None:
        """
        Stop netd: SIGTERM, then SIGKILL if it has not exited after
        C{stopTimeout} seconds.  Only the process this server started is
        signalled.  Idempotent.

        @return: netd's exit code (negative: the signal that ended it), or
            L{None} if it was never started.
        """
        process = self.process
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(self.stopTimeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            self.returncode = process.returncode
        if self._ownDirectory and self.directory.exists():
            self._finalLog = self.log()
            shutil.rmtree(self.directory, ignore_errors=True)
        return self.returncode

    @property
    def running(self) -> bool:
        """
        Whether netd's process is still alive.
        """
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        """
        What netd has printed so far (its log lines and errors).
        """
        if self._finalLog is not None:
            return self._finalLog
        try:
            return self.logFile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def addresses(self, service: str) -> list[dict[str, Any]]:
        """
        Every address a service listens on, as in the ports file: each with
        C{listen}, C{transport} (C{tcp}, C{udp}, C{unix}) and C{host} and
        C{port}, or C{path}.
        """
        services: dict[str, list[dict[str, Any]]] = self.report.get("services", {})
        if service not in services:
            raise KeyError(f"netd runs no service {service!r}; it runs {', '.join(map(repr, services)) or 'none'}")
        return services[service]

    def address(self, service: str, transport: str = "tcp") -> tuple[str, int]:
        """
        The C{(host, port)} of a service's first address of C{transport}
        (C{"tcp"} or C{"udp"}), ready for C{socket.connect}.
        """
        for bound in self.addresses(service):
            if bound["transport"] == transport:
                return str(bound["host"]), int(bound["port"])
        raise KeyError(f"service {service!r} has no {transport} address: {self.addresses(service)}")

    @property
    def admin(self) -> AdminClient:
        """
        A client of this netd's control API, with its token (the file the
        ports file names: C{admin_token_file}, or the one netd made) when it
        has one.
        """
        if self._admin is None:
            address = self.report.get("admin")
            if address is None:
                raise RuntimeError("this netd has no control API (its config sets admin = false, or it is not started)")
            tokenFile = address.get("token_file")
            token = Path(tokenFile).read_text().strip() if tokenFile else None
            self._admin = AdminClient(address, token)
        return self._admin
