"""
The config's JSON Schema (L{netd.config.schema}, C{netd schema}): the published copy
is what netd prints, every shipped and documented config passes it, and the
bad configs it refuses are the ones C{netd check} refuses too.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest
from jsonschema import Draft202012Validator

from netd.config.options import ConfigError, NumberRange, between, option, optionInfo, schemaFields
from netd.config.schema import SchemaBuilder, configSchema, registryPlugins, renderSchema
from netd.config.spec import DaemonSpec, ServiceEnvelope, parseConfig
from netd.daemon.cli import main
from netd.faults.spec import FAULT_TYPES
from netd.registry import PluginRegistry, discoverPlugins
from netd.tls.options import TLSOptions

from .test_docs import tomlBlocks

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = ROOT / "docs" / "netd.schema.json"
DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "plugins").rglob("*.md"))]
DOC_BLOCKS = [
    (f"{page.relative_to(ROOT).as_posix()}:{block.line}", block.text)
    for page in DOC_PAGES
    for block in tomlBlocks(page.read_text(encoding="utf-8"))
    if not block.invalid
]
CONFIG_FILES = sorted((ROOT / "config").rglob("*.toml"))


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    """
    The installed plugins, found once for the module.
    """
    return discoverPlugins()


@pytest.fixture(scope="module")
def validator(registry: PluginRegistry) -> Draft202012Validator:
    """
    A validator of the schema of every installed plugin.
    """
    schema = configSchema(registryPlugins(registry))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def schemaErrors(validator: Draft202012Validator, data: Any) -> list[str]:
    """
    The schema's complaints about C{data}, each with its path.
    """
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(data)]


def test_publishedSchemaIsWhatNetdPrints(capsys: pytest.CaptureFixture[str]) -> None:
    """
    docs/netd.schema.json is byte for byte what `netd schema --built-in` prints now, so it cannot drift.
    """
    assert main(["schema", "--built-in"]) == 0
    printed = capsys.readouterr().out
    assert printed == PUBLISHED.read_text(encoding="utf-8"), (
        "docs/netd.schema.json is stale: regenerate it with `netd schema --built-in > docs/netd.schema.json`"
    )


def test_schemaCommandCoversInstalledPlugins(capsys: pytest.CaptureFixture[str], registry: PluginRegistry) -> None:
    """
    `netd schema` names every installed plugin (third-party ones included); --built-in only those that ship.
    """
    assert main(["schema"]) == 0
    everything = json.loads(capsys.readouterr().out)
    assert main(["schema", "--built-in"]) == 0
    builtIn = json.loads(capsys.readouterr().out)
    plugin = "properties", "services", "items", "properties", "plugin", "enum"
    assert set(_at(everything, plugin)) == set(registry.plugins)
    assert set(_at(builtIn, plugin)) == {
        name for name, loaded in registry.plugins.items() if loaded.source.startswith("built-in ")
    }
    assert {"echo", "dns-proxy", "tls-echo"} <= set(_at(builtIn, plugin))


def test_schemaIsValidDraft202012() -> None:
    """
    The published schema declares draft 2020-12 and is itself a valid schema of it.
    """
    schema = json.loads(PUBLISHED.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_shippedConfigsPass(path: Path, validator: Draft202012Validator) -> None:
    """
    Every config shipped under config/ passes the schema.
    """
    with path.open("rb") as f:
        assert schemaErrors(validator, tomllib.load(f)) == []


@pytest.mark.parametrize("located", DOC_BLOCKS, ids=lambda located: located[0])
def test_documentedConfigsPass(located: tuple[str, str], validator: Draft202012Validator) -> None:
    """
    Every TOML block of the docs that is not marked invalid passes the schema.
    """
    assert schemaErrors(validator, tomllib.loads(located[1])) == []


def test_documentedBlocksFound() -> None:
    """
    The docs test above has blocks to check (the walk over the pages finds them).
    """
    assert len(DOC_BLOCKS) >= 5


def test_schemaLineIsAComment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """
    A config whose first line is the '#:schema PATH' directive editors read passes `netd check` as it is.
    """
    config = tmp_path / "netd.toml"
    config.write_text(f"#:schema {PUBLISHED}\n{GOOD}", encoding="utf-8")
    assert main(["check", "-c", str(config)]) == 0
    assert 'name = "e"' in capsys.readouterr().out


GOOD = '[[services]]\nname = "e"\nplugin = "echo"\nlisten = ["tcp:0:interface=127.0.0.1"]\n'

BAD_CONFIGS = {
    "unknown daemon key": ('[daemon]\nlog_formt = "json"\n' + GOOD, "daemon.log_formt"),
    "unknown top-level key": ("servics = []\n" + GOOD, "servics"),
    "unknown service key": (GOOD + "idle_timout = 3\n", "services[0].idle_timout"),
    "wrong type": ('[daemon]\nshutdown_timeout = "10"\n' + GOOD, "daemon.shutdown_timeout"),
    "wrong type in an array": (GOOD.replace('["tcp:0:interface=127.0.0.1"]', "[7007]"), "services[0].listen[0]"),
    "number above its range": ("[daemon]\nshutdown_timeout = 3601\n" + GOOD, "daemon.shutdown_timeout"),
    "number below its range": (GOOD + "max_connections = 0\n", "services[0].max_connections"),
    "bad enum": ('[daemon]\nlog_level = "verbose"\n' + GOOD, "daemon.log_level"),
    "bad framing": (GOOD + 'framing = "u24"\n', "services[0].framing"),
    "missing required key": (GOOD.replace('listen = ["tcp:0:interface=127.0.0.1"]\n', ""), "services[0].listen"),
    "unknown plugin": (GOOD.replace('"echo"', '"ecko"'), "services[0].plugin"),
    "another plugin's option": (GOOD + "cache_size = 10\n", "services[0].cache_size"),
    "dns-proxy option out of range": (
        '[[services]]\nname = "d"\nplugin = "dns-proxy"\nlisten = ["udp:0"]\ntimeout = 61\n',
        "services[0].timeout",
    ),
    "a framing on a datagram-only plugin": (
        '[[services]]\nname = "d"\nplugin = "dns-proxy"\nlisten = ["udp:0"]\nframing = "line"\n',
        "services[0].framing",
    ),
    "unknown tls key": (GOOD + 'tls = { certificate = "auto", protocol = "1.3" }\n', "services[0].tls.protocol"),
    "bad tls version": (GOOD + 'tls = { certificate = "auto", min_version = "1.4" }\n', "services[0].tls.min_version"),
    "unknown fault type": (GOOD + 'faults = [{ type = "latncy", ms = 5 }]\n', "services[0].faults[0].type"),
    "fault key of another type": (
        GOOD + 'faults = [{ type = "latency", ms = 5, size = 3 }]\n',
        "services[0].faults[0].size",
    ),
    "fault number out of range": (GOOD + 'faults = [{ type = "slice", size = 0 }]\n', "services[0].faults[0].size"),
    "fault missing its key": (GOOD + 'faults = [{ type = "latency" }]\n', "services[0].faults[0].ms"),
    "fault direction it does not take": (
        GOOD + 'framing = "line"\nfaults = [{ type = "split_frame", direction = "both" }]\n',
        "services[0].faults[0].direction",
    ),
    "tls-echo without its tls table": (GOOD.replace('"echo"', '"tls-echo"'), "services[0].tls"),
    "no service": ('[daemon]\nlog_level = "info"\n', "services"),
    "admin on udp": ('[daemon]\nadmin = "udp:8053"\n' + GOOD, "daemon.admin"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_badConfigRefusedByBoth(case: str, validator: Draft202012Validator, registry: PluginRegistry) -> None:
    """
    Each bad config of the table is refused by the schema and by netd check, which names the key path.
    """
    text, path = BAD_CONFIGS[case]
    data = tomllib.loads(text)
    assert schemaErrors(validator, data), f"the schema accepts {case}"
    with pytest.raises(ConfigError) as info:
        parseConfig(data, "bad.toml", registry)
    assert f"bad.toml: {path}:" in str(info.value)


def test_goodConfigPassesBoth(validator: Draft202012Validator, registry: PluginRegistry) -> None:
    """
    The config the bad ones are made from passes both, so each refusal above is about its one change.
    """
    data = tomllib.loads(GOOD)
    assert schemaErrors(validator, data) == []
    assert parseConfig(data, "good.toml", registry).services


def test_adminOnlyPassesBoth(validator: Draft202012Validator, registry: PluginRegistry) -> None:
    """
    A config with a control API and no service passes the schema and netd, as its services come at runtime; without the control API it is refused ("no service" above).
    """
    data = tomllib.loads('[daemon]\nadmin = "tcp:0:interface=127.0.0.1"\n')
    assert schemaErrors(validator, data) == []
    assert parseConfig(data, "admin.toml", registry).services == ()


def test_everyKeyHasItsHelpAndDefault(registry: PluginRegistry) -> None:
    """
    Every key of the daemon table, the service envelope and each plugin carries its option's help as
    description, its default, and whether it is required, as netd check decodes it.
    """
    schema = configSchema(registryPlugins(registry))
    daemon = schema["properties"]["daemon"]
    _assertDescribes(DaemonSpec, daemon["properties"], daemon.get("required", []))
    service = schema["properties"]["services"]["items"]
    for branch in service["allOf"]:
        plugin = registry.get(branch["if"]["properties"]["plugin"]["const"])
        keys = branch["then"]["properties"]
        envelope = {k: v for k, v in keys.items() if k in schemaFields(ServiceEnvelope)}
        own = {k: v for k, v in keys.items() if k not in envelope}
        assert set(own) == set(schemaFields(plugin.optionsType))
        _assertDescribes(plugin.optionsType, own, [k for k in branch["then"]["required"] if k in own])


def _assertDescribes(schemaClass: type, properties: dict[str, Any], required: list[str]) -> None:
    """
    C{properties} say each field's help, default and requiredness.
    """
    for key, (field, _) in schemaFields(schemaClass).items():
        assert properties[key]["description"] == optionInfo(field).help, key
        if field.default is attrs.NOTHING:
            assert key in required
        elif field.default is not None:
            assert "default" in properties[key], key


def test_boundsComeFromTheChecks(registry: PluginRegistry) -> None:
    """
    Every range check of a key (between, atLeast) is its minimum and maximum in the schema, for the
    daemon, the envelope, tls, each fault type and each plugin.
    """
    schema = configSchema(registryPlugins(registry))
    defs = schema["$defs"]
    service = schema["properties"]["services"]["items"]
    tables: list[tuple[type, dict[str, Any]]] = [
        (DaemonSpec, schema["properties"]["daemon"]["properties"]),
        (ServiceEnvelope, service["properties"]),
        (TLSOptions, defs["TLSOptions"]["properties"]),
        *[(cls, defs[f"fault.{name}"]["properties"]) for name, cls in FAULT_TYPES.items()],
        *[
            (registry.get(b["if"]["properties"]["plugin"]["const"]).optionsType, b["then"]["properties"])
            for b in service["allOf"]
        ],
    ]
    checked = 0
    for schemaClass, properties in tables:
        for key, (field, _) in schemaFields(schemaClass).items():
            for check in optionInfo(field).checks:
                if isinstance(check, NumberRange):
                    numeric = _numericMember(properties[key])
                    assert numeric["minimum"] == check.low, (schemaClass, key)
                    assert numeric.get("maximum") == check.high, (schemaClass, key)
                    checked += 1
    assert checked > 40


def test_numberRangeSaysItsBounds() -> None:
    """
    between() checks as before and states its bounds as JSON Schema keywords.
    """
    check = between(1, 5)
    assert check(3) is None
    assert check(6) == "6 is out of range; expected 1 to 5"
    assert isinstance(check, NumberRange)
    assert check.jsonSchema() == {"minimum": 1, "maximum": 5}
    assert NumberRange(0).jsonSchema() == {"minimum": 0}
    assert NumberRange(0)(-1) == "-1 is too small; expected at least 0"


def test_renderIsStable(registry: PluginRegistry) -> None:
    """
    Two renderings of the schema are the same text (no set or dict order leaks into it).
    """
    plugins = registryPlugins(registry, builtInOnly=True)
    assert renderSchema(configSchema(plugins)) == renderSchema(configSchema(list(reversed(plugins))))


def _at(document: Any, path: tuple[str, ...]) -> Any:
    """
    The value at C{path} inside C{document}.
    """
    for key in path:
        document = document[key]
    return document


def _numericMember(prop: dict[str, Any]) -> dict[str, Any]:
    """
    The integer or number schema of a property (the member of an anyOf that is one).
    """
    if prop.get("type") in ("integer", "number"):
        return prop
    return next(m for m in prop.get("anyOf", []) if m.get("type") in ("integer", "number"))


class Opaque:
    """
    A value type that parses itself and does not say its JSON form.
    """

    configTypeName = "an opaque value"

    @classmethod
    def fromConfig(cls, value: object) -> Opaque:
        return cls()


@attrs.frozen
class OpaqueOptions:
    """
    A plugin's options with keys the schema cannot type.
    """

    opaque: Opaque = option(help="Parsed by its type.")
    raw: bytes = option(b"", help="No JSON word for bytes.")


def test_valueTypesWithoutJsonWordTakeAnything() -> None:
    """
    A plugin option whose value type parses itself without saying its JSON form (or an annotation with no
    JSON word) is left open in the schema rather than breaking `netd schema`; netd check still checks it.
    """
    properties, required = SchemaBuilder().properties(OpaqueOptions)
    assert properties["opaque"] == {"description": "Parsed by its type."}
    assert properties["raw"]["description"] == "No JSON word for bytes."
    assert "type" not in properties["raw"]
    assert required == ["opaque"]
