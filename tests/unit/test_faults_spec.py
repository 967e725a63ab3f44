"""
Faults as config (L{netd.faults.spec}) and as the control API's table
(L{netd.faults.active.ServiceFaults}): every fault type decodes, every problem
is reported at its own key path, a service's C{faults} key goes through
C{netd check} and back, and the API's body is checked the same way.
"""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
import tomli_w
from twisted.internet.task import Clock

from netd.config.options import ConfigError, Problem, renderPath
from netd.config.spec import parseConfig
from netd.daemon.service import NetService
from netd.events import EventLog
from netd.faults.active import REQUEST_BODY, ServiceFaults
from netd.faults.base import ServiceShape
from netd.faults.spec import FAULT_TYPES, FaultList
from netd.metrics import Counters
from netd.registry import PluginRegistry, discoverPlugins
from netd.testing.memory import UDPMemoryReactorClock, connect

MINIMAL: dict[str, dict[str, Any]] = {
    "latency": {"ms": 10},
    "bandwidth": {"rate": 1000},
    "slice": {"size": 1},
    "close_after": {"bytes": 10},
    "reset_after": {"bytes": 10},
    "stall_after": {"bytes": 10},
    "blackhole": {},
    "reset_on_data": {},
    "slow_close": {"ms": 10},
    "refuse": {},
    "tls_stall": {},
    "tls_abort": {},
    "tls_garbage": {},
    "drop": {},
    "duplicate": {},
    "delay": {"ms": 10},
    "truncate": {"bytes": 10},
    "reorder": {},
    "split_frame": {},
    "merge_frames": {},
    "oversize_frame": {"size": 1000},
    "truncate_frame": {},
    "corrupt_length": {},
}
"""
The smallest table of each fault type: its required keys.
"""

EVERYTHING = ServiceShape(streams=True, datagrams=True, tls=True, framing="u16")


def decode(tables: Any) -> tuple[FaultList | None, list[tuple[str, str]]]:
    """
    Decode a faults array; the list, and each problem as (key path, message).
    """
    problems: list[Problem] = []
    faults = FaultList.decodeConfig(tables, ("faults",), problems)
    return faults, [(renderPath(p.path), p.message) for p in problems]


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    """
    The installed plugins.
    """
    return discoverPlugins()


def test_minimalCoversEveryType() -> None:
    """
    The table of minimal fault tables names every fault type, so the tests below cover them all.
    """
    assert set(MINIMAL) == set(FAULT_TYPES)


@pytest.mark.parametrize("typeName", sorted(FAULT_TYPES))
def test_everyTypeDecodes(typeName: str) -> None:
    """
    Each fault type decodes from its minimal table, with its schedule unconditional.
    """
    faults, problems = decode([{"type": typeName, **MINIMAL[typeName]}])
    assert problems == []
    assert faults is not None
    [fault] = faults
    assert type(fault) is FAULT_TYPES[typeName]
    assert fault.unconditional
    assert fault.misfit(EVERYTHING) is None


@pytest.mark.parametrize("typeName", sorted(FAULT_TYPES))
def test_roundTrip(typeName: str) -> None:
    """
    A fault's toConfig table decodes back to the same fault, through TOML too.
    """
    faults, _ = decode([{"type": typeName, **MINIMAL[typeName], "every": 3, "seed": 9}])
    assert faults is not None
    data = tomllib.loads(tomli_w.dumps({"faults": faults.toConfig()}))
    again, problems = decode(data["faults"])
    assert problems == []
    assert again == faults


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        ({"type": "latency"}, [("faults", "expected an array of fault tables, each with a type, got table")]),
        (["latency"], [("faults[0]", "expected a table with a type key, got string 'latency'")]),
        ([{"ms": 1}], [("faults[0].type", "missing required key; expected one of latency,")]),
        (
            [{"type": "latncy", "ms": 1}],
            [("faults[0].type", "unknown fault type 'latncy'; did you mean 'latency'? The types are latency, ")],
        ),
        ([{"type": "xyzzy"}], [("faults[0].type", "unknown fault type 'xyzzy'; the types are latency, ")]),
        (
            [{"type": 3}],
            [("faults[0].type", "expected the name of a fault type, got integer 3; the types are latency, ")],
        ),
        ([{"type": "latency"}], [("faults[0].ms", "missing required key")]),
        ([{"type": "latency", "ms": -1}], [("faults[0].ms", "out of range")]),
        ([{"type": "latency", "ms": 10, "msec": 3}], [("faults[0].msec", "unknown key")]),
        ([{"type": "slice", "size": 0}], [("faults[0].size", "out of range")]),
        ([{"type": "bandwidth", "rate": "fast"}], [("faults[0].rate", "expected an integer")]),
        ([{"type": "latency", "ms": 1, "direction": "up"}], [("faults[0].direction", "expected one of")]),
        (
            [{"type": "refuse", "direction": "to_client"}],
            [("faults[0].direction", "refuse acts on the whole connection")],
        ),
        (
            [{"type": "split_frame", "direction": "both"}],
            [("faults[0].direction", "split_frame acts on to_client or from_client only")],
        ),
        ([{"type": "tls_abort", "alert": "oops"}], [("faults[0].alert", "expected one of")]),
        (
            [{"type": "drop", "first": 2, "probability": 0.5}],
            [("faults[0].probability", "one of first, every and probability")],
        ),
        ([{"type": "drop", "probability": 2}], [("faults[0].probability", "out of range")]),
        ([{"type": "drop", "every": 0}], [("faults[0].every", "out of range")]),
        (
            [{"type": "latency", "ms": 1}, {"type": "slice"}, {"type": "nope"}],
            [("faults[1].size", "missing required key"), ("faults[2].type", "unknown fault type")],
        ),
    ],
)
def test_problemsAtKeyPaths(tables: Any, expected: list[tuple[str, str]]) -> None:
    """
    Each problem of a faults array is reported at its own key path, all of them at once.
    """
    faults, problems = decode(tables)
    assert faults is None
    assert [path for path, _ in problems] == [path for path, _ in expected]
    for (_, message), (_, fragment) in zip(problems, expected, strict=True):
        assert fragment in message


@pytest.mark.parametrize(
    ("shape", "table", "fragment"),
    [
        (ServiceShape(False, True, False, None), {"type": "latency", "ms": 1}, "listens only on udp"),
        (ServiceShape(True, False, False, "raw"), {"type": "tls_stall"}, "has no tls table"),
        (ServiceShape(True, False, False, "raw"), {"type": "drop"}, "has no udp: listener"),
        (ServiceShape(True, False, False, "raw"), {"type": "split_frame"}, "raw framing"),
        (ServiceShape(True, False, False, "line"), {"type": "corrupt_length"}, "length prefix"),
    ],
)
def test_misfits(shape: ServiceShape, table: dict[str, Any], fragment: str) -> None:
    """
    A fault that cannot act on a service of its shape is a problem at its type's key path.
    """
    faults, _ = decode([table])
    assert faults is not None
    [problem] = faults.misfits(shape, ("services", 0, "faults"))
    assert renderPath(problem.path) == "services[0].faults[0].type"
    assert fragment in problem.message


def service(**keys: Any) -> dict[str, Any]:
    """
    A config with one echo service, with C{keys} added.
    """
    return {"services": [{"name": "e", "plugin": "echo", "listen": ["tcp:0"], **keys}]}


def test_serviceCarriesFaults(registry: PluginRegistry) -> None:
    """
    A service's faults key is decoded into its spec, and comes back from the normalized config.
    """
    faults = [{"type": "latency", "ms": 20, "direction": "to_client"}, {"type": "refuse", "first": 2}]
    config = parseConfig(service(faults=faults), "f.toml", registry)
    [spec] = config.services
    assert [f.typeName for f in spec.faults] == ["latency", "refuse"]
    table = config.toConfig()["services"][0]["faults"]
    again = parseConfig(service(faults=table), "f.toml", registry)
    assert again.services[0].faults == spec.faults


def test_serviceFaultsDefaultEmpty(registry: PluginRegistry) -> None:
    """
    A service without a faults key has none, and its normalized config says so.
    """
    config = parseConfig(service(), "f.toml", registry)
    assert len(config.services[0].faults) == 0
    assert config.toConfig()["services"][0]["faults"] == []


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            {"faults": [{"type": "tls_abort"}]},
            "f.toml: services[0].faults[0].type: tls_abort acts on the TLS handshake",
        ),
        ({"faults": [{"type": "drop"}]}, "f.toml: services[0].faults[0].type: drop acts on datagrams"),
        ({"faults": [{"type": "latency"}]}, "f.toml: services[0].faults[0].ms: missing required key"),
        ({"faults": "latency"}, "f.toml: services[0].faults: expected an array of fault tables"),
    ],
)
def test_serviceFaultProblems(registry: PluginRegistry, keys: dict[str, Any], expected: str) -> None:
    """
    netd check names the service's fault key path of a bad or misfit fault.
    """
    with pytest.raises(ConfigError) as info:
        parseConfig(service(**keys), "f.toml", registry)
    assert expected in str(info.value)


def test_misfitReportedWithPluginProblems(registry: PluginRegistry) -> None:
    """
    A misfit fault is reported together with a problem of the plugin's own keys.
    """
    with pytest.raises(ConfigError) as info:
        parseConfig(service(faults=[{"type": "tls_stall"}], colour="red"), "f.toml", registry)
    paths = {renderPath(p.path) for p in info.value.problems}
    assert paths == {"services[0].faults[0].type", "services[0].colour"}


def table(configured: list[dict[str, Any]] | None = None) -> ServiceFaults:
    """
    The faults table of a TCP service with TLS and raw framing.
    """
    faults, _ = decode(configured or [])
    assert faults is not None
    return ServiceFaults(faults, ServiceShape(True, False, True, "raw"), Counters(), EventLog(10, Clock()))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ([], [("", 'expected a JSON object {"faults": [...]}')]),
        ({}, [("faults", "missing required key")]),
        ({"faults": [], "extra": 1}, [("extra", "unknown key")]),
        ({"faults": [{"type": "latency", "ms": -5}]}, [("faults[0].ms", "out of range")]),
        ({"faults": [{"type": "drop"}]}, [("faults[0].type", "no udp: listener")]),
    ],
)
def test_apiBodyProblems(body: Any, expected: list[tuple[str, str]]) -> None:
    """
    A bad PUT body is refused with each problem at its path inside the body, and the faults in force stay.
    """
    faults = table([{"type": "slice", "size": 4}])
    with pytest.raises(ConfigError) as info:
        faults.put(body)
    assert info.value.source == REQUEST_BODY
    assert [renderPath(p.path) for p in info.value.problems] == [path for path, _ in expected]
    for problem, (_, fragment) in zip(info.value.problems, expected, strict=True):
        assert fragment in problem.message
    assert faults.get({})["faults"] == [{"type": "slice", "size": 4, "delay": 0.0, "direction": "to_client"}]


def test_apiPutGetDelete() -> None:
    """
    PUT replaces the faults (fresh counts), GET shows them with their applied counts, DELETE empties them.
    """
    faults = table([{"type": "refuse"}])
    faults.streams.faults[0].next()
    assert faults.get({})["applied"] == [1]
    answer = faults.put({"faults": [{"type": "latency", "ms": 5}, {"type": "tls_abort", "every": 2}]})
    assert [f["type"] for f in answer["faults"]] == ["latency", "tls_abort"]
    assert answer["applied"] == [0, 0]
    assert len(faults.streams.faults) == 2
    assert faults.delete({}) == {"faults": [], "applied": []}
    assert faults.streams.faults == ()


def test_serviceRunsItsFaults(registry: PluginRegistry) -> None:
    """
    A running service's configured faults act on its stream connections, and are its faults table.
    """
    config = parseConfig(service(faults=[{"type": "refuse"}]), "f.toml", registry)
    reactor = UDPMemoryReactorClock()
    netService = NetService(config.services[0], reactor, shutdownTimeout=1)
    assert netService.runtimeTables()["faults"] is netService.faults
    assert netService.faults.shape == ServiceShape(True, False, False, "raw")
    assert netService.connections is not None
    connection = connect(netService.connections)
    assert connection is not None and connection.transport.disconnecting
    netService.faults.delete({})
    connection = connect(netService.connections)
    assert connection is not None and not connection.transport.disconnecting


def duplicates(*copies: int, direction: str = "to_client") -> list[dict[str, Any]]:
    """
    Duplicate fault tables, one per C{copies}.
    """
    return [{"type": "duplicate", "copies": c, "direction": direction} for c in copies]


@pytest.mark.parametrize(
    ("tables", "fragment"),
    [
        (duplicates(10, 10, 10), "the duplicate faults make up to 1331 datagrams of one"),
        (duplicates(3, 3, 3, 1), "make up to 128 datagrams of one"),
        (duplicates(8, direction="both"), "make up to 81 datagrams of one"),
        (duplicates(1, 1, 1, 1, direction="both"), "make up to 256 datagrams of one"),
        ([{"type": "drop", "first": 1}] * 33, "33 faults; at most 32"),
    ],
)
def test_faultListCaps(tables: list[dict[str, Any]], fragment: str) -> None:
    """
    A faults list longer than 32, or whose duplicates multiply one datagram into more than 64, is one problem at the list's path.
    """
    faults, problems = decode(tables)
    assert faults is None
    [(path, message)] = problems
    assert path == "faults" and fragment in message


def test_faultListAtItsCaps() -> None:
    """
    32 faults, and duplicates making exactly 64 datagrams of one (each way counted), are accepted.
    """
    faults, problems = decode(duplicates(3, 3, 3) + [{"type": "drop", "first": 1}] * 29)
    assert problems == [] and faults is not None
    assert (len(faults), faults.copiesOfOne()) == (32, 64)
    for both in (duplicates(7, direction="both"), duplicates(1, 1, 1, direction="both")):
        faults, problems = decode(both)
        assert problems == [] and faults is not None and faults.copiesOfOne() == 64


def test_oneDuplicateCopiesBounded() -> None:
    """
    One duplicate fault's copies is at most 63, the cap less the datagram itself.
    """
    _, problems = decode(duplicates(64))
    assert [path for path, _ in problems] == ["faults[0].copies"]
    assert "out of range" in problems[0][1]


def test_serviceFaultCapNamesTheKeyPath(registry: PluginRegistry) -> None:
    """
    The config error of multiplying duplicates names services[N].faults.
    """
    udp = {"services": [{"name": "e", "plugin": "echo", "listen": ["udp:0"], "faults": duplicates(10, 10, 10)}]}
    with pytest.raises(ConfigError) as info:
        parseConfig(udp, "f.toml", registry)
    assert "f.toml: services[0].faults: the duplicate faults make up to 1331 datagrams of one" in str(info.value)


def test_apiPutOfMultiplyingDuplicatesRefused() -> None:
    """
    A PUT whose duplicates multiply past the cap is refused at faults, and the faults in force stay.
    """
    faults = ServiceFaults(FaultList(), ServiceShape(False, True, False, None), Counters(), EventLog(10, Clock()))
    with pytest.raises(ConfigError) as info:
        faults.put({"faults": duplicates(10, 10, 10)})
    assert [renderPath(p.path) for p in info.value.problems] == ["faults"]
    assert faults.get({})["faults"] == []
