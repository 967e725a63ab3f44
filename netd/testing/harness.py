"""
Run netd from tests: L{NetdServer} starts C{netd run} as a child process on a
config given as a dict or as TOML text, on ports the system picks, waits until
every service listens, tells where, and stops it; L{AdminClient} drives its
control API (faults, events, DNS records and scripts).  netd's own integration
tests run on it too.

pytest loads this module (through L{netd.testing.pytest_plugin}) into every test
session wherever netd is installed, so it imports only the standard library
and C{tomli_w}, never the reactor: netd itself runs in the child.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, TypeGuard
from urllib.parse import quote, urlencode

import tomli_w

from netd.daemon.unixhttp import UnixHTTPConnection

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


def netdCommand(*arguments: str) -> list[str]:
    """
    The command line of netd with C{arguments}, run by this interpreter (so
    the netd of the test's environment, not whichever is on C{PATH}).
    """
    return [sys.executable, "-m", "netd", *arguments]


def withDaemonKeys(config: Mapping[str, Any] | str, keys: Mapping[str, Any]) -> str:
    """
    C{config} as TOML text with each of C{keys} in its C{[daemon]} table,
    unless it sets that key itself.

    TOML text keeps its own lines (so that netd's messages quote what the test
    wrote), the missing keys added under its C{[daemon]} header or in a new
    C{[daemon]} table in front; text that does not parse is answered as it is,
    for netd to report the syntax error the way it reports every other problem.

    @param config: the config, as the dict C{tomllib} would read or as TOML text.
    """
    if not isinstance(config, str):
        table = copy.deepcopy(dict(config))
        table["daemon"] = {**keys, **table.get("daemon", {})}
        return tomli_w.dumps(table)
    try:
        table = tomllib.loads(config)
    except tomllib.TOMLDecodeError:
        return config
    daemon = table.get("daemon", {})
    missing = tomli_w.dumps({key: value for key, value in keys.items() if key not in daemon})
    if not missing:
        return config
    header = re.search(r"^[ \t]*\[daemon\][ \t]*(#[^\n]*)?$", config, re.MULTILINE)
    if header is not None:
        return f"{config[: header.end()]}\n{missing}{config[header.end() :]}"
    if "daemon" in table:
        # [daemon] written another way (an inline table, dotted keys).
        table["daemon"] = {**keys, **daemon}
        return tomli_w.dumps(table)
    return f"[daemon]\n{missing}\n{config}"


def unavailable(reason: str) -> NoReturn:
    """
    Something a test needs is missing from this machine (a tool, IPv6 on
    loopback, a system call): skip the test on a developer's machine, but
    fail it under C{CI=true}, where the suite's set-up provides everything.
    """
    import pytest

    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


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


def _withQuery(path: str, query: Mapping[str, Any] | None) -> str:
    """
    C{path} with C{query}'s arguments (a list value repeats its key, L{None}
    leaves the key out).
    """
    given = {key: value for key, value in (query or {}).items() if value is not None}
    return path + "?" + urlencode(given, doseq=True) if given else path


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
            return UnixHTTPConnection(str(self.address["path"]), self.timeout)
        return http.client.HTTPConnection(str(self.address["host"]), int(self.address["port"]), timeout=self.timeout)

    def url(self, path: str = "/") -> str:
        """
        The URL of C{path} on the API, for an HTTP client of your own (over
        TCP; a C{unix:} API has none).
        """
        if "path" in self.address:
            raise ValueError(f"the control API listens on a unix socket, not at a URL: {self.address['path']}")
        return f"http://{self.address['host']}:{self.address['port']}{path}"

    def headers(self) -> dict[str, str]:
        """
        The C{Authorization} header with the token, as a client that may
        change things sends it; empty without a token.
        """
        return {} if self.token is None else {"Authorization": f"Bearer {self.token}"}

    def exchange(
        self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None
    ) -> tuple[int, Any]:
        """
        Send one request and decode the answer, whatever its status.

        @param path: the path, e.g. C{/services/dns/records}.
        @param body: a JSON-ready value to send, or L{None} for no body.
        @param query: query arguments; a list value repeats its key, L{None}
            leaves the key out.
        @return: the status and the decoded JSON answer, or the text when it
            is not JSON.
        """
        path = _withQuery(path, query)
        headers = {"Accept": "application/json", **self.headers()}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
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
        return response.status, answer

    def request(self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None) -> Any:
        """
        Send one request (as L{exchange}) and answer the decoded answer.

        @raise AdminError: for a status of 400 or more.
        """
        path = _withQuery(path, query)
        status, answer = self.exchange(method, path, body)
        if status >= 400:
            raise AdminError(method, path, status, answer)
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

    def addService(self, table: Mapping[str, Any]) -> dict[str, Any]:
        """
        C{POST /services}: create and start a service from C{table}, a
        C{[[services]]} table of the config as a dict; answers its report
        (as L{service}), whose C{addresses} say where it listens.

        @raise AdminError: 422 with each problem of the table, 409 when the
            name is taken or an address cannot be listened on.
        """
        answer: dict[str, Any] = self.request("POST", "/services", dict(table))
        return answer

    def removeService(self, name: str) -> dict[str, Any]:
        """
        C{DELETE /services/NAME}: stop the service; when this returns its
        listeners are closed (its open connections drain).  Answers the
        addresses it listened on.
        """
        answer: dict[str, Any] = self.request("DELETE", f"/services/{quote(name, safe='')}")
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


def _tail(text: str) -> str:
    """
    The last L{LOG_TAIL} characters of C{text}, as an error message quotes them.
    """
    return text if len(text) <= LOG_TAIL else "...\n" + text[-LOG_TAIL:]


def _isConfig(config: object) -> TypeGuard[Mapping[str, Any] | str]:
    """
    Whether C{config} is a config itself (a dict or TOML text), not a file's
    path or L{None}.
    """
    return isinstance(config, (str, Mapping))


class NetdServer:
    """
    One netd running as a child process, for a test: C{with NetdServer(config) as
    server:} (or L{start} and L{stop}) runs C{netd run} on ports the system picks,
    tells where each service listens (L{address}), and drives its control API
    (L{admin}).  Stopping signals only the process it started, and is safe twice.

    @ivar directory: the folder of the config, ports and log files.
    @ivar configFile: the config file netd runs on (unused when the config is
        L{None}); rewrite it and call C{admin.reload()} to change a running netd.
    @ivar portsFile: where netd reports its addresses (C{--ports-file}).
    @ivar logFile: what netd prints (standard output and error).
    @ivar process: netd's child process, once started.
    @ivar returncode: netd's exit code once it has stopped, else L{None}.
    @ivar report: the ports file once netd is ready:
        C{{"services": {NAME: [address, ...]}, "admin": address, "pid": ...}}.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | str | os.PathLike[str] | None,
        directory: str | os.PathLike[str] | None = None,
        *,
        launcher: Sequence[str] | None = None,
        arguments: Sequence[str] = (),
        environment: Mapping[str, str | None] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        preexec: Callable[[], None] | None = None,
        shutdownTimeout: float | None = 0,
        startTimeout: float = START_TIMEOUT,
        stopTimeout: float = STOP_TIMEOUT,
    ) -> None:
        """
        The arguments are described in docs/testing.md, "Outside pytest".

        @param config: a dict or TOML text (completed by L{configText}); the path of
            a config file, run as it is; or L{None}: netd's embedded default.
        @param directory: where the files go; a temporary folder removed at L{stop}
            when L{None}.
        @param launcher: the command up to netd's options (L{netdCommand}C{("run")}
            by default); the server appends C{-c}, C{--ports-file} and C{arguments}.
        @param arguments: more options for netd.
        @param environment: variables to set (L{None} removes one) over the inherited
            environment, scrubbed of systemd's variables and with C{XDG_STATE_HOME}
            under C{directory}, so netd's state never lands in the user's home.
        @param cwd: netd's working directory (the test's by default).
        @param preexec: run in the child before netd starts (e.g. to lower a limit).
        @param shutdownTimeout: the C{shutdown_timeout} a config without one gets;
            L{None} leaves netd's default.
        @param startTimeout: seconds L{start} waits for every service to listen.
        @param stopTimeout: seconds L{stop} waits after its signal.
        """
        self.config = config
        self.launcher = list(netdCommand("run") if launcher is None else launcher)
        self.arguments = list(arguments)
        self.shutdownTimeout = shutdownTimeout
        self.startTimeout = startTimeout
        self.stopTimeout = stopTimeout
        self.cwd = cwd
        self.preexec = preexec
        self._ownDirectory = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="netd-") if directory is None else directory)
        self.configFile = self.directory / "netd.toml"
        if isinstance(config, os.PathLike):
            self.configFile = Path(config)
        self.portsFile = self.directory / "ports.json"
        self.logFile = self.directory / "netd.log"
        self.environment = self._environment(environment or {})
        self.returncode: int | None = None
        self.report: dict[str, Any] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self._admin: AdminClient | None = None
        self._finalLog: str | None = None

    def __enter__(self) -> NetdServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def _environment(self, changes: Mapping[str, str | None]) -> dict[str, str]:
        """
        netd's environment: the inherited one without what is not meant for
        it, with the state directory in L{directory}, and C{changes} applied.
        """
        environment = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_VARIABLES and k != "STATE_DIRECTORY"}
        environment["XDG_STATE_HOME"] = str(self.directory / "state")
        for key, value in changes.items():
            if value is None:
                environment.pop(key, None)
            else:
                environment[key] = value
        return environment

    @property
    def stateDir(self) -> Path:
        """
        netd's default state directory in its environment
        (C{$XDG_STATE_HOME/netd}, else C{~/.local/state/netd}): where the
        control API's token and C{certificate = "auto"}'s files are, unless
        the config sets C{[daemon] state_dir}.
        """
        stateHome = self.environment.get("XDG_STATE_HOME")
        if stateHome:
            return Path(stateHome) / "netd"
        return Path(self.environment.get("HOME", "~")).expanduser() / ".local" / "state" / "netd"

    @property
    def pid(self) -> int:
        """
        netd's process ID.
        """
        if self.process is None:
            raise RuntimeError("netd has not been started")
        return self.process.pid

    def command(self) -> list[str]:
        """
        The command line L{start} runs.
        """
        configArguments = [] if self.config is None else ["-c", str(self.configFile)]
        return [*self.launcher, *configArguments, "--ports-file", str(self.portsFile), *self.arguments]

    def configText(self) -> str:
        """
        The config as netd reads it: L{withDaemonKeys} of the config, with
        C{admin} on a loopback port of its own (L{TEST_ADMIN}) and the
        C{shutdownTimeout} given.
        """
        if not _isConfig(self.config):
            raise TypeError("only a config given as a dict or as TOML text is completed")
        keys: dict[str, Any] = {"admin": TEST_ADMIN}
        if self.shutdownTimeout is not None:
            keys["shutdown_timeout"] = self.shutdownTimeout
        return withDaemonKeys(self.config, keys)

    def start(self, wait: bool = True) -> NetdServer:
        """
        Start netd and, unless C{wait} is false, wait until every service
        listens.

        @raise NetdStartError: netd exited first (a bad config: its message
            is in the error) or was not ready in C{startTimeout} seconds; the
            process is gone either way.
        """
        if self.process is not None:
            raise RuntimeError("this NetdServer was started already; make a new one")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.portsFile.unlink(missing_ok=True)
        if _isConfig(self.config):
            self.configFile.write_text(self.configText())
        with self.logFile.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment,
                cwd=self.cwd,
                preexec_fn=self._inChild,
            )
        if wait:
            try:
                self.waitUntilReady()
            except BaseException:
                self.stop()
                raise
        return self

    def _inChild(self) -> None:
        """
        In the child, before netd starts: undo an inherited "ignore SIGINT"
        (a test run as a background job or under nohup), which Twisted
        respects by not handling SIGINT at all; then the caller's C{preexec}.
        """
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if self.preexec is not None:
            self.preexec()

    def waitUntilReady(self, timeout: float | None = None) -> NetdServer:
        """
        Wait for the ports file, which netd writes (in one step) once every
        service listens, and keep it in L{report}; only one that names the
        process this server started is believed (L{start} removed any left
        from an earlier run).  Call it again after a reload to read the
        addresses anew.  Unlike L{start}, it leaves the process alone when
        it fails.

        @param timeout: seconds to wait (C{startTimeout} when L{None}).
        @raise NetdStartError: netd exited first or was not ready in time.
        """
        if self.process is None:
            raise RuntimeError("netd has not been started")
        limit = self.startTimeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while self._ownReport() is None:
            if self.process.poll() is not None:
                raise NetdStartError(
                    f"netd exited with code {self.process.returncode} before it was ready "
                    f"({self._what()}); it printed:\n{self.logTail()}"
                )
            if time.monotonic() > deadline:
                raise NetdStartError(
                    f"netd was not ready after {limit} seconds ({self._what()}); it printed:\n{self.logTail()}"
                )
            time.sleep(0.02)
        return self

    def _what(self) -> str:
        """
        Which config a start error is about.
        """
        return "the embedded default config" if self.config is None else f"config {self.configFile}"

    def _ownReport(self) -> dict[str, Any] | None:
        """
        The ports file, if the process this server started has written it;
        kept in L{report}.
        """
        assert self.process is not None
        try:
            report = json.loads(self.portsFile.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
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
        return _tail(self.log())

    def logOffset(self) -> int:
        """
        How many bytes netd has printed so far: where L{logSince} starts to
        read what netd prints from now on (during one test, say).
        """
        return len(self._logBytes())

    def logSince(self, offset: int) -> str:
        """
        What netd has printed after L{logOffset} answered C{offset} (the last
        L{LOG_TAIL} characters of it).
        """
        return _tail(self._logBytes()[offset:].decode("utf-8", errors="replace"))

    def _logBytes(self) -> bytes:
        """
        What netd has printed so far, as bytes.
        """
        if self._finalLog is not None:
            return self._finalLog.encode("utf-8")
        try:
            return self.logFile.read_bytes()
        except FileNotFoundError:
            return b""

    def stop(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> int | None:
        """
        Stop netd: send C{sig}, then SIGKILL if it has not exited after
        C{timeout} seconds (C{stopTimeout} when L{None}).  Only the process
        this server started is signalled.  Idempotent.

        @return: netd's exit code (negative: the signal that ended it), or
            L{None} if it was never started.
        """
        process = self.process
        if process is not None:
            if process.poll() is None:
                process.send_signal(sig)
                try:
                    process.wait(self.stopTimeout if timeout is None else timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            self.returncode = process.returncode
        if self._ownDirectory and self.directory.exists():
            self._finalLog = self.log()
            shutil.rmtree(self.directory, ignore_errors=True)
        return self.returncode

    def kill(self) -> None:
        """
        End netd at once with SIGKILL (a teardown that need not watch it drain).
        """
        self.stop(signal.SIGKILL)

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

    @property
    def services(self) -> dict[str, list[dict[str, Any]]]:
        """
        Every service's addresses, as in the ports file, by service name.
        """
        services: dict[str, list[dict[str, Any]]] = self.report.get("services", {})
        return services

    def addresses(self, service: str) -> list[dict[str, Any]]:
        """
        Every address a service listens on, as in the ports file: each with
        C{listen}, C{transport} (C{tcp}, C{udp}, C{unix}) and C{host} and
        C{port}, or C{path}.
        """
        if service not in self.services:
            raise KeyError(f"netd runs no service {service!r}; it runs {', '.join(map(repr, self.services)) or 'none'}")
        return self.services[service]

    def address(self, service: str, transport: str = "tcp") -> tuple[str, int]:
        """
        The C{(host, port)} of a service's first address of C{transport}
        (C{"tcp"} or C{"udp"}), ready for C{socket.connect}.
        """
        for bound in self.addresses(service):
            if bound["transport"] == transport:
                return str(bound["host"]), int(bound["port"])
        raise KeyError(f"service {service!r} has no {transport} address: {self.addresses(service)}")

    def unixPath(self, service: str) -> str:
        """
        The socket path of a service's first C{unix:} address.
        """
        for bound in self.addresses(service):
            if bound["transport"] == "unix":
                return str(bound["path"])
        raise KeyError(f"service {service!r} has no unix address: {self.addresses(service)}")

    @property
    def adminAddress(self) -> dict[str, Any] | None:
        """
        Where the control API listens (the ports file's C{"admin"} entry), or
        L{None} when netd runs without one.
        """
        address: dict[str, Any] | None = self.report.get("admin")
        return address

    @property
    def toxiproxyURL(self) -> str:
        """
        The base URL of the toxiproxy-compatible API (the ports file's
        C{"toxiproxy"} entry, from C{[daemon] toxiproxy}), for a toxiproxy client.
        """
        address: dict[str, Any] | None = self.report.get("toxiproxy")
        if address is None or "port" not in address:
            raise RuntimeError("this netd has no toxiproxy API on TCP (its config sets no [daemon] toxiproxy)")
        host = str(address["host"])
        return f"http://[{host}]:{address['port']}" if ":" in host else f"http://{host}:{address['port']}"

    @property
    def admin(self) -> AdminClient:
        """
        A client of this netd's control API, with its token (the file the
        ports file names: C{admin_token_file}, or the one netd made) when it
        has one.
        """
        if self._admin is None:
            address = self.adminAddress
            if address is None:
                raise RuntimeError("this netd has no control API (its config sets admin = false, or it is not started)")
            tokenFile = address.get("token_file")
            token = Path(tokenFile).read_text().strip() if tokenFile else None
            self._admin = AdminClient(address, token)
        return self._admin

    def adminURL(self, path: str = "/") -> str:
        """
        The URL of C{path} on the control API, for an HTTP client of your own.
        """
        return self.admin.url(path)

    def adminHeaders(self) -> dict[str, str]:
        """
        The C{Authorization} header a client that changes things sends (empty
        when netd has no token).
        """
        return self.admin.headers()

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """
        One request to the control API with the token: the status and the
        decoded answer, error statuses returned rather than raised (for tests
        of what the API refuses).
        """
        return self.admin.exchange(method, path, body)

    def addService(self, table: Mapping[str, Any]) -> dict[str, Any]:
        """
        Create and start a service while netd runs (L{AdminClient.addService});
        L{address} and L{services} know it at once.
        """
        answer = self.admin.addService(table)
        self._ownReport()
        return answer

    def removeService(self, name: str) -> dict[str, Any]:
        """
        Stop a service while netd runs (L{AdminClient.removeService}); it
        leaves L{services}.
        """
        answer = self.admin.removeService(name)
        self._ownReport()
        return answer

    def counter(self, name: str, service: str) -> float:
        """
        The value of a service's counter C{name} (as in C{netd_NAME_total})
        in C{/metrics}; 0 when netd has not counted it yet.
        """
        prefix = f"netd_{name}_total{{"
        for line in self.admin.metrics().splitlines():
            if line.startswith(prefix) and f'service="{service}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def rssBytes(self) -> int:
        """
        netd's resident memory in bytes, from C{/proc} (Linux), for a test
        that bounds what a load makes it hold.
        """
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"/proc/{self.pid}/status has no VmRSS line")
