"""
The plugin contract and discovery: what checkPlugin refuses, where plugins are
found, how a broken or clashing plugin is recorded without stopping the others,
and how a plugin's schema is described.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import EntryPoint
from typing import Any

import attrs
import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from zope.interface import implementer
from zope.interface.verify import verifyClass, verifyObject

import netd.registry
from netd.config.options import ConfigError, describeSchema, option, schemaFields
from netd.config.spec import ENVELOPE_KEYS, DaemonSpec, ServiceEnvelope, parseConfig
from netd.interfaces import IDatagramHandler, IFrameReceiver, IProtocolPlugin, IStreamHandler, PluginContext
from netd.metrics import Counters
from netd.registry import ENTRY_POINT_GROUP, checkPlugin, discoverPlugins
from netd.testing.memory import connect, makeStreamStack


@attrs.frozen
class FakeOptions:
    """
    The keys of the test plugin.
    """

    level: int = option(1, help="A level.")


@attrs.frozen
class UnresolvableOptions:
    """
    A schema whose annotation names a type that does not exist.
    """

    level: NoSuchType = option(1, help="A level.")  # type: ignore[name-defined]  # noqa: F821


@implementer(IProtocolPlugin)
class FakePlugin:
    """
    A plugin that meets the contract; tests break one attribute at a time.
    """

    name: Any = "fake"
    summary: Any = "a test plugin"
    optionsType: Any = FakeOptions
    transports: Any = frozenset({"stream", "datagram"})
    framings: Any = ("line", "u16")
    requiresTLS: Any = False

    def build(self, options: Any, context: Any) -> Any:
        """
        Never called by these tests.
        """
        raise NotImplementedError()


def fakePlugin(**attributes: Any) -> FakePlugin:
    """
    A L{FakePlugin} with some attributes replaced.
    """
    plugin = FakePlugin()
    for key, value in attributes.items():
        setattr(plugin, key, value)
    return plugin


@implementer(IProtocolPlugin)
class NoSummary:  # type: ignore[misc]  # deliberately incomplete
    """
    Claims the interface but lacks C{summary}.
    """

    name = "nosummary"
    optionsType = FakeOptions
    transports = frozenset({"datagram"})
    framings = ()

    def build(self, options: Any, context: Any) -> Any:
        """
        Never called.
        """


@implementer(IProtocolPlugin)
class NoRequiresTLS:  # type: ignore[misc]  # deliberately incomplete
    """
    Claims the interface, not through netd.bases.Plugin, and does not say
    whether it requires TLS.
    """

    name = "norequirestls"
    summary = "no requiresTLS"
    optionsType = FakeOptions
    transports = frozenset({"datagram"})
    framings = ()

    def build(self, options: Any, context: Any) -> Any:
        """
        Never called.
        """


@implementer(IProtocolPlugin)
class NoBuild:  # type: ignore[misc]  # deliberately incomplete
    """
    Claims the interface but has no C{build}.
    """

    name = "nobuild"
    summary = "no build method"
    optionsType = FakeOptions
    transports = frozenset({"datagram"})
    framings = ()


@implementer(IProtocolPlugin)
class WrongBuild:
    """
    Claims the interface but its C{build} takes no arguments.
    """

    name = "wrongbuild"
    summary = "build with the wrong signature"
    optionsType = FakeOptions
    transports = frozenset({"datagram"})
    framings = ()

    def build(self) -> Any:  # type: ignore[override]  # deliberately wrong
        """
        Never called.
        """


def test_validPluginAccepted() -> None:
    """
    A plugin that meets every part of the contract gets no complaint.
    """
    assert checkPlugin(FakePlugin()) is None
    assert checkPlugin(fakePlugin(name="dns-proxy", transports=frozenset({"datagram"}), framings=())) is None
    assert checkPlugin(fakePlugin(requiresTLS=True)) is None


REFUSED = [
    pytest.param(object(), ["does not provide IProtocolPlugin"], id="not-a-plugin"),
    pytest.param(
        NoSummary(), ["does not provide IProtocolPlugin", "summary attribute was not provided"], id="missing-summary"
    ),
    pytest.param(NoBuild(), ["does not provide IProtocolPlugin", "build"], id="missing-build"),
    pytest.param(
        NoRequiresTLS(),
        ["does not provide IProtocolPlugin", "requiresTLS attribute was not provided"],
        id="missing-requiresTLS",
    ),
    pytest.param(
        fakePlugin(requiresTLS="yes"), ["its requiresTLS 'yes' is not True or False"], id="requiresTLS-not-bool"
    ),
    pytest.param(
        fakePlugin(requiresTLS=True, transports=frozenset({"datagram"}), framings=()),
        ["it requires TLS but serves no streams"],
        id="requiresTLS-without-streams",
    ),
    pytest.param(WrongBuild(), ["does not provide IProtocolPlugin", "build"], id="build-wrong-signature"),
    pytest.param(fakePlugin(name="Echo"), ["its name 'Echo' is not a lowercase word"], id="name-capitalized"),
    pytest.param(fakePlugin(name="two words"), ["its name 'two words' is not a lowercase word"], id="name-two-words"),
    pytest.param(fakePlugin(name=" echo"), ["its name ' echo' is not a lowercase word"], id="name-padded"),
    pytest.param(fakePlugin(name=""), ["its name '' is not a lowercase word"], id="name-empty"),
    pytest.param(fakePlugin(name=7), ["its name 7 is not a lowercase word"], id="name-not-a-string"),
    pytest.param(fakePlugin(optionsType=dict), ["its optionsType is not an attrs class"], id="options-not-attrs"),
    pytest.param(fakePlugin(optionsType=None), ["its optionsType is not an attrs class"], id="options-none"),
    pytest.param(fakePlugin(optionsType=FakeOptions()), ["optionsType"], id="options-an-instance"),
    pytest.param(
        fakePlugin(optionsType=UnresolvableOptions), ["optionsType", "NoSuchType"], id="options-unresolvable-annotation"
    ),
    pytest.param(
        fakePlugin(transports=frozenset({"stream", "quic"})),
        ["its transports", "'quic'", "not a non-empty set drawn from ['datagram', 'stream']"],
        id="transports-unknown",
    ),
    pytest.param(fakePlugin(transports=frozenset()), ["its transports", "not a non-empty set"], id="transports-empty"),
    pytest.param(fakePlugin(transports=None), ["transports"], id="transports-none"),
    pytest.param(
        fakePlugin(framings=("line", "json")),
        ["it names unknown framings ['json']", "known: raw, line, netstring, u16, u32"],
        id="framing-unknown",
    ),
    pytest.param(fakePlugin(framings=None), ["framings"], id="framings-none"),
    pytest.param(
        fakePlugin(transports=frozenset({"datagram"}), framings=("line",)),
        ["it must list framings exactly when it serves streams"],
        id="framings-without-streams",
    ),
    pytest.param(
        fakePlugin(transports=frozenset({"stream"}), framings=()),
        ["it must list framings exactly when it serves streams"],
        id="streams-without-framings",
    ),
]


@pytest.mark.parametrize(("plugin", "expected"), REFUSED)
def test_checkPluginRefuses(plugin: object, expected: list[str]) -> None:
    """
    checkPlugin returns (never raises) a reason naming what is wrong with a plugin that breaks the contract.
    """
    reason = checkPlugin(plugin)
    assert reason is not None
    for fragment in expected:
        assert fragment in reason, (fragment, reason)


def test_builtInAndThirdPartyDiscovered() -> None:
    """
    Discovery finds the built-in echo module and the third-party reverse plugin through its entry point.
    """
    registry = discoverPlugins()
    assert registry.broken == {}
    echo = registry.plugins["echo"]
    assert echo.source == "built-in netd_plugins.echo"
    assert echo.plugin.name == "echo"
    reverse = registry.plugins["reverse"]
    assert reverse.source == "entry point 'reverse' = netd_reverse:plugin (from netd-reverse)"
    assert reverse.plugin.transports == frozenset({"stream"})
    assert registry.get("reverse") is reverse.plugin
    assert registry.get("nonesuch") is None


def recordLoading(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """
    Record, in the list returned, each built-in module discovery loads and
    C{"entry points"} each time it reads the installed entry points.
    """
    loaded: list[str] = []
    loadBuiltIn, entryPoints = netd.registry._loadBuiltIn, netd.registry._entryPoints

    def recordBuiltIn(module: str) -> tuple[str, Any]:
        """
        Load a built-in module, noting it.
        """
        loaded.append(module)
        return loadBuiltIn(module)

    def recordEntryPoints(group: str) -> Any:
        """
        Read the entry points, noting it.
        """
        loaded.append("entry points")
        return entryPoints(group)

    monkeypatch.setattr(netd.registry, "_loadBuiltIn", recordBuiltIn)
    monkeypatch.setattr(netd.registry, "_entryPoints", recordEntryPoints)
    return loaded


def test_builtInLoadedAlone(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Asking for a built-in plugin loads the module named after it and neither the other modules nor the entry points.
    """
    loaded = recordLoading(monkeypatch)
    registry = discoverPlugins()
    plugin = registry.get("dns-proxy")
    assert plugin is not None and plugin.name == "dns-proxy"
    assert registry.get("dns-proxy") is plugin
    assert loaded == ["netd_plugins.dnsproxy"]


def test_othersLoadedWhenNotBuiltIn(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A plugin no built-in module is named after (a third-party one, or none) loads everything, once.
    """
    loaded = recordLoading(monkeypatch)
    registry = discoverPlugins()
    assert registry.get("reverse") is registry.plugins["reverse"].plugin
    assert registry.get("nonesuch") is None
    assert loaded.count("entry points") == 1
    assert "netd_plugins.echo" in loaded


def test_loadedAloneThenAllIsNoClash(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A plugin loaded on its own, then again with everything, is listed once and not reported as taking its own name.
    """
    recordLoading(monkeypatch)
    registry = discoverPlugins()
    echo = registry.get("echo")
    assert registry.plugins["echo"].plugin is echo
    assert registry.plugins["echo"].source == "built-in netd_plugins.echo"
    assert registry.broken == {}


def addEntryPoints(monkeypatch: pytest.MonkeyPatch, *extra: tuple[str, str]) -> dict[str, str]:
    """
    Make discovery see the installed entry points plus C{extra} (name, value)
    pairs; return each extra's expected source, by name.
    """
    real = netd.registry._entryPoints
    added = [EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in extra]

    def entryPoints(group: str) -> list[EntryPoint]:
        """
        The installed entry points of C{group}, then the added ones.
        """
        return [*real(group), *added]

    monkeypatch.setattr(netd.registry, "_entryPoints", entryPoints)
    return {name: f"entry point {name!r} = {value} (from ?)" for name, value in extra}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param(
            "netd_no_such_module:plugin",
            "failed to load: ModuleNotFoundError: No module named 'netd_no_such_module'",
            id="module-missing",
        ),
        pytest.param("netd_plugins.echo:nosuch", "failed to load: AttributeError", id="attribute-missing"),
        pytest.param("netd_plugins.echo:EchoOptions", "does not provide IProtocolPlugin", id="not-a-plugin"),
    ],
)
def test_brokenEntryPointRecorded(monkeypatch: pytest.MonkeyPatch, value: str, reason: str) -> None:
    """
    An entry point that cannot be loaded or is not a plugin is recorded with its source, and the others still load.
    """
    sources = addEntryPoints(monkeypatch, ("broken", value))
    registry = discoverPlugins()
    assert set(registry.plugins) >= {"echo", "reverse"}
    assert list(registry.broken) == [sources["broken"]]
    assert registry.broken[sources["broken"]].startswith(reason), registry.broken


def test_nameClashRecordedWithBothSources(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A second plugin with a taken name is recorded as broken, naming its own source and the one that won.
    """
    sources = addEntryPoints(monkeypatch, ("echo", "netd_plugins.echo:plugin"))
    registry = discoverPlugins()
    assert registry.plugins["echo"].source == "built-in netd_plugins.echo"
    assert "reverse" in registry.plugins
    assert registry.broken == {sources["echo"]: "its name 'echo' is taken by built-in netd_plugins.echo"}


def test_brokenBuiltInRecorded(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A built-in module that fails to import is recorded as broken and does not stop the other plugins.
    """
    real = netd.registry._candidates

    def candidates() -> list[tuple[str, Any]]:
        """
        The real candidates, after one bad one.
        """
        return [("built-in netd_plugins.bad", ImportError("no module named _missing")), *real()]

    monkeypatch.setattr(netd.registry, "_candidates", candidates)
    registry = discoverPlugins()
    assert set(registry.plugins) >= {"echo", "reverse"}
    assert registry.broken == {"built-in netd_plugins.bad": "failed to load: ImportError: no module named _missing"}


@pytest.mark.parametrize(
    "candidate",
    [
        pytest.param(fakePlugin(name="Bad Name"), id="bad-name"),
        pytest.param(fakePlugin(transports=None), id="transports-none"),
        pytest.param(fakePlugin(framings=None), id="framings-none"),
    ],
)
def test_invalidCandidateDoesNotStopDiscovery(monkeypatch: pytest.MonkeyPatch, candidate: object) -> None:
    """
    A loaded object that breaks the contract in any way is recorded as broken while the others still load.
    """
    real = netd.registry._candidates

    def candidates() -> list[tuple[str, Any]]:
        """
        The real candidates, after one bad one.
        """
        return [("entry point 'bad' = bad:plugin (from bad)", candidate), *real()]

    monkeypatch.setattr(netd.registry, "_candidates", candidates)
    registry = discoverPlugins()
    assert set(registry.plugins) >= {"echo", "reverse"}
    assert list(registry.broken) == ["entry point 'bad' = bad:plugin (from bad)"]


def test_configNamingBrokenPluginListsFailures(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A config naming a plugin that failed to load is told the plugin is unknown and which plugins failed and why.
    """
    sources = addEntryPoints(monkeypatch, ("broken", "netd_no_such_module:plugin"))
    registry = discoverPlugins()
    text = '[[services]]\nname = "b"\nplugin = "broken"\nlisten = ["tcp:0"]\n'
    with pytest.raises(ConfigError) as info:
        parseConfig(tomllib.loads(text), "test.toml", registry)
    (line,) = str(info.value).splitlines()
    assert line.startswith("test.toml: services[0].plugin: unknown plugin 'broken'"), line
    assert "nown plugins: dns-proxy, echo, proxy, reverse" in line
    assert (
        f"; plugins that failed to load: {sources['broken']}: failed to load: ModuleNotFoundError: "
        "No module named 'netd_no_such_module'"
    ) in line


def clashingOptions(*keys: str) -> type:
    """
    A plugin schema with an integer option named after each of C{keys}.
    """
    namespace: dict[str, Any] = {"__annotations__": dict.fromkeys(keys, "int"), "__doc__": "Clashing keys."}
    namespace.update({key: option(1, help="A key named like the core's.") for key in keys})
    return attrs.frozen(type("ClashingOptions", (), namespace))


def test_envelopeKeysAreTheEnvelopeFields() -> None:
    """
    The names a plugin option may not take are the fields of the service envelope, core keys and limits alike.
    """
    assert ENVELOPE_KEYS == set(schemaFields(ServiceEnvelope))
    assert ENVELOPE_KEYS >= {
        "name",
        "plugin",
        "listen",
        "tls",
        "events",
        "framing",
        "faults",
        "max_connections",
        "idle_timeout",
    }


@pytest.mark.parametrize("key", sorted(ENVELOPE_KEYS))
def test_optionNamedLikeEnvelopeKeyRefused(key: str) -> None:
    """
    A plugin with an option named like any key of the service envelope is refused, naming the plugin, the option and why.
    """
    reason = checkPlugin(fakePlugin(name="clash", optionsType=clashingOptions("level", key)))
    assert reason == (
        f"plugin 'clash' has options named like keys every service has ({key}, in ClashingOptions): the core reads "
        "those keys itself, so the plugin could never be given them; rename the options"
    )


def test_optionsNamedLikeEnvelopeKeysAllNamed() -> None:
    """
    Every clashing option of a plugin is named in the one reason, in order.
    """
    reason = checkPlugin(fakePlugin(name="clash", optionsType=clashingOptions("tls", "framing", "level")))
    assert reason is not None and "(framing, tls, in ClashingOptions)" in reason


def test_pluginWithEnvelopeOptionNotLoaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A plugin whose option is named like a core key is not loaded: a config naming it is told why, with the plugin's source.
    """
    real = netd.registry._candidates
    source = "entry point 'clash' = clash:plugin (from clash)"
    clash = fakePlugin(name="clash", optionsType=clashingOptions("events"))
    monkeypatch.setattr(netd.registry, "_candidates", lambda: [(source, clash), *real()])
    registry = discoverPlugins()
    assert "clash" not in registry.plugins
    text = '[[services]]\nname = "c"\nplugin = "clash"\nlisten = ["tcp:0"]\nevents = 3\n'
    with pytest.raises(ConfigError) as info:
        parseConfig(tomllib.loads(text), "test.toml", registry)
    assert (
        f"plugins that failed to load: {source}: plugin 'clash' has options named like keys every service has (events"
        in str(info.value)
    )


def test_describeReverseSchema() -> None:
    """
    describeSchema gives one row per plugin key: key, type in words, TOML default and help.
    """
    reverse = discoverPlugins().get("reverse")
    assert reverse is not None
    assert describeSchema(reverse.optionsType) == [
        ("prefix", "a string", '""', "Text put before every reversed frame."),
        ("repeat", "an integer", "1", "How many times each reversed frame is sent."),
    ]


def test_describeTLSEchoSchemaEmpty() -> None:
    """
    A plugin with no keys of its own describes to no rows.
    """
    tlsEcho = discoverPlugins().get("tls-echo")
    assert tlsEcho is not None
    assert describeSchema(tlsEcho.optionsType) == []


@pytest.mark.parametrize(
    ("schema", "key", "typeWords", "default"),
    [
        pytest.param(ServiceEnvelope, "name", "a string", "(required)", id="required"),
        pytest.param(ServiceEnvelope, "framing", "a string", "(unset)", id="unset"),
        pytest.param(ServiceEnvelope, "enabled", "a boolean", "true", id="boolean"),
        pytest.param(ServiceEnvelope, "idle_timeout", "a number", "300.0", id="float"),
        pytest.param(ServiceEnvelope, "listen", "an array, each a listen string", "(required)", id="array"),
        pytest.param(DaemonSpec, "log_format", "one of 'text', 'json'", '"text"', id="literal"),
    ],
)
def test_describeSchemaRows(schema: type, key: str, typeWords: str, default: str) -> None:
    """
    describeSchema spells required keys, unset defaults, literals and arrays the way a user reads them.
    """
    rows = {row[0]: row for row in describeSchema(schema)}
    (_, words, shownDefault, help) = rows[key]
    assert words.startswith(typeWords)
    assert shownDefault == default
    assert help


def builtInPlugins() -> list[Any]:
    """
    Every built-in plugin, as the registry loads them.
    """
    loaded = discoverPlugins().plugins.values()
    return sorted((found.plugin for found in loaded if found.source.startswith("built-in ")), key=lambda p: p.name)


def test_builtInPluginsAllChecked() -> None:
    """
    The contract test below runs over every built-in plugin, the three that ship at least.
    """
    assert {plugin.name for plugin in builtInPlugins()} >= {"echo", "tls-echo", "dns-proxy"}


REQUIRED_OPTIONS: dict[str, dict[str, Any]] = {"proxy": {"upstream": "tcp:127.0.0.1:1"}}
"""
The keys without a default of the built-in plugins that have some, by plugin.
"""


@pytest.mark.parametrize("plugin", builtInPlugins(), ids=lambda plugin: plugin.name)
def test_builtInObjectsProvideTheirInterfaces(plugin: Any) -> None:
    """
    A built-in plugin, the handler it builds and a stream receiver (its class, new and once connected) provide their interfaces by inspection.
    """
    verifyObject(IProtocolPlugin, plugin)
    context = PluginContext(reactor=MemoryReactorClock(), log=Logger(), serviceName="s", counters=Counters())
    handler = plugin.build(plugin.optionsType(**REQUIRED_OPTIONS.get(plugin.name, {})), context)
    if "datagram" in plugin.transports:
        verifyObject(IDatagramHandler, handler)
    if "stream" in plugin.transports:
        verifyObject(IStreamHandler, handler)
        receiver = handler.newConnection()
        verifyClass(IFrameReceiver, type(receiver))
        verifyObject(IFrameReceiver, receiver)
        connection = connect(makeStreamStack(handler, plugin.framings[0]))
        assert connection is not None
        connected = connection.protocol.wrappedProtocol.receiver
        verifyObject(IFrameReceiver, connected)
        connection.peerClosed()
        verifyObject(IFrameReceiver, connected)
