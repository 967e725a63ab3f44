"""
The JSON Schema (draft 2020-12) of netd's config file, for editors, read off
the very option classes that C{netd check} decodes with (types, help, defaults,
L{netd.config.options.NumberRange} bounds, a value type's
C{configJsonSchema}), so that it cannot drift; one C{if}/C{then} per plugin
picks a service's keys.  C{netd check} stays the authority.
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Union

import attrs

from netd.config.options import optionInfo, schemaFields, toConfig
from netd.config.spec import DaemonSpec, PluginSource, ServiceEnvelope
from netd.faults.base import Fault
from netd.faults.spec import FAULT_TYPES, MAX_FAULTS, FaultList
from netd.stream.framing import FRAMINGS

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_JSON_TYPES: dict[Any, str] = {bool: "boolean", int: "integer", float: "number", str: "string"}
_EPYTEXT = re.compile(r"[CLI]\{([^{}]*)\}")


class SchemaBuilder:
    """
    Turns schema classes into JSON Schema; nested tables used in more than one
    place (the C{tls} table, each fault type) go to C{$defs} once.

    @ivar defs: the C{$defs} of the document, by name.
    @ivar refPrefix: where the document keeps them: C{#/$defs/} in the config
        schema, C{#/components/schemas/} in the control API's OpenAPI.
    """

    def __init__(self, refPrefix: str = "#/$defs/") -> None:
        self.defs: dict[str, Any] = {}
        self.refPrefix = refPrefix

    def value(self, tp: Any) -> dict[str, Any]:
        """
        The schema of a TOML value of annotation C{tp} (a TOML file has no
        null, so an optional key's L{None} is its absence).  A value type
        that parses itself and does not say its C{configJsonSchema}, or an
        annotation netd has no JSON word for, takes any value here: C{netd
        check} still checks it.
        """
        origin = typing.get_origin(tp)
        if origin in (Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) == 1:
                return self.value(members[0])
            return {"anyOf": [self.value(m) for m in members]}
        if origin is Literal:
            allowed = list(typing.get_args(tp))
            literal: dict[str, Any] = {"const": allowed[0]} if len(allowed) == 1 else {"enum": allowed}
            jsonType = _JSON_TYPES.get(type(allowed[0]))
            return (
                {"type": jsonType, **literal}
                if jsonType and all(type(a) is type(allowed[0]) for a in allowed)
                else literal
            )
        if origin is tuple:
            return {"type": "array", "items": self.value(typing.get_args(tp)[0])}
        if origin in (dict, Mapping):
            return {"type": "object", "additionalProperties": self.value(typing.get_args(tp)[1])}
        if tp is FaultList:
            return self.faults()
        own = getattr(tp, "configJsonSchema", None)
        if isinstance(own, dict):
            copied: dict[str, Any] = json.loads(json.dumps(own))
            return copied
        if isinstance(tp, type) and attrs.has(tp) and not hasattr(tp, "fromConfig"):
            return self.ref(tp.__name__, lambda: self.table(tp))
        jsonType = _JSON_TYPES.get(tp)
        return {} if jsonType is None else {"type": jsonType}

    def ref(self, name: str, build: typing.Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """
        A C{$ref} to the definition C{name}, built the first time.
        """
        if name not in self.defs:
            self.defs[name] = {}
            self.defs[name] = build()
        return {"$ref": self.refPrefix + name}

    def properties(self, schema: type) -> tuple[dict[str, Any], list[str]]:
        """
        The C{properties} of a schema class's keys, and the required ones.
        """
        properties = {}
        required = []
        for key, (field, tp) in schemaFields(schema).items():
            info = optionInfo(field)
            prop = self.value(tp)
            bounds: dict[str, Any] = {}
            for check in info.checks:
                jsonSchema = getattr(check, "jsonSchema", None)
                if jsonSchema is not None:
                    bounds.update(jsonSchema())
            if bounds:
                prop = _bound(prop, bounds)
            description = info.help or getattr(tp, "configTypeName", "")
            if description:
                prop = {"description": description, **prop}
            if field.default is attrs.NOTHING:
                required.append(key)
            elif field.default is not None:
                prop["default"] = toConfig(field.default)
            properties[key] = prop
        return properties, required

    def table(self, schema: type, **extra: Any) -> dict[str, Any]:
        """
        A closed table: the keys of C{schema}, no others.
        """
        properties, required = self.properties(schema)
        table: dict[str, Any] = {"type": "object"}
        summary = _summary(schema)
        if summary:
            table["description"] = summary
        table["properties"] = properties
        if required:
            table["required"] = required
        table["additionalProperties"] = False
        table.update(extra)
        return table

    def faults(self) -> dict[str, Any]:
        """
        The C{faults} array: each table's C{type} picks the keys it takes.
        """
        return self.ref("faults", self._faults)

    def _faults(self) -> dict[str, Any]:
        """
        The definition behind L{faults}: at most L{MAX_FAULTS} tables, one
        C{if}/C{then} per fault type.
        """
        return {
            "type": "array",
            "maxItems": MAX_FAULTS,
            "items": {
                "type": "object",
                "required": ["type"],
                "properties": {"type": {"description": "The fault type.", "enum": list(FAULT_TYPES)}},
                "allOf": [
                    {
                        "if": {"properties": {"type": {"const": name}}, "required": ["type"]},
                        "then": self.ref(f"fault.{name}", lambda cls=cls: self.fault(cls)),  # type: ignore[misc]
                    }
                    for name, cls in FAULT_TYPES.items()
                ],
            },
        }

    def fault(self, cls: type[Fault]) -> dict[str, Any]:
        """
        One fault type's table: C{type}, its own keys, the schedule, and the
        directions it takes.
        """
        properties, required = self.properties(cls)
        properties["direction"] = {**properties["direction"], "enum": list(cls.directions)}
        return {
            "type": "object",
            "description": cls.summary,
            "properties": {"type": {"const": cls.typeName}, **properties},
            "required": ["type", *required],
            "additionalProperties": False,
        }

    def service(self, plugins: Iterable[Any]) -> dict[str, Any]:
        """
        A C{[[services]]} table: the envelope, then, by C{plugin}, that plugin's keys.
        """
        envelope, required = self.properties(ServiceEnvelope)
        envelope["framing"] = {**envelope["framing"], "enum": list(FRAMINGS)}
        plugins = sorted(plugins, key=lambda p: p.name)
        branches = []
        for plugin in plugins:
            own, ownRequired = self.properties(plugin.optionsType)
            keys = {**envelope, **own}
            if plugin.framings:
                keys["framing"] = {**keys["framing"], "enum": list(plugin.framings)}
            else:
                del keys["framing"], keys["max_frame"]
            needed = required + ownRequired + (["tls"] if plugin.requiresTLS else [])
            then: dict[str, Any] = {"properties": keys, "required": needed, "additionalProperties": False}
            summary = _summary(plugin.optionsType)
            if summary:
                then = {"description": summary, **then}
            branches.append(
                {"if": {"properties": {"plugin": {"const": plugin.name}}, "required": ["plugin"]}, "then": then}
            )
        return {
            "type": "object",
            "description": "One service: the keys every service has, and those of its plugin.",
            "properties": {**envelope, "plugin": {**envelope["plugin"], "enum": [p.name for p in plugins]}},
            "required": required,
            "allOf": branches,
        }


def configSchema(plugins: Iterable[Any]) -> dict[str, Any]:
    """
    The JSON Schema of a config file served by C{plugins}.
    """
    builder = SchemaBuilder()
    daemon = builder.table(DaemonSpec)
    service = builder.service(plugins)
    return {
        "$schema": DIALECT,
        "title": "netd config",
        "description": "A netd config file (TOML): a [daemon] table and one [[services]] table per service. "
        "Generated by `netd schema` from the option classes `netd check` uses; `netd check` is the authority "
        "(it also checks the rules that span keys, files and users).",
        "type": "object",
        "properties": {
            "daemon": daemon,
            "services": {
                "description": "The services, each a [[services]] table.",
                "type": "array",
                "minItems": 1,
                "items": service,
            },
        },
        # Services, or an API through which services are made at runtime.
        "anyOf": [
            {"required": ["services"]},
            {
                "required": ["daemon"],
                "properties": {"daemon": {"required": ["admin"], "properties": {"admin": {"type": "string"}}}},
            },
            {
                "required": ["daemon"],
                "properties": {"daemon": {"required": ["toxiproxy"], "properties": {"toxiproxy": {"type": "string"}}}},
            },
        ],
        "additionalProperties": False,
        "$defs": builder.defs,
    }


def registryPlugins(registry: PluginSource, builtInOnly: bool = False) -> list[Any]:
    """
    The plugins of C{registry}, or only those that ship with netd.
    """
    return [
        loaded.plugin
        for loaded in registry.plugins.values()
        if not builtInOnly or loaded.source.startswith("built-in ")
    ]


def renderSchema(document: Mapping[str, Any]) -> str:
    """
    The text of a schema document as C{netd schema} prints it and the docs keep it.
    """
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _bound(schema: dict[str, Any], bounds: dict[str, Any]) -> dict[str, Any]:
    """
    C{schema} with a number range applied to its numeric members.
    """
    if "anyOf" in schema:
        return {**schema, "anyOf": [_bound(m, bounds) for m in schema["anyOf"]]}
    if schema.get("type") in ("integer", "number"):
        return {**schema, **bounds}
    return schema


def _summary(cls: type) -> str:
    """
    The first paragraph of a class's docstring, on one line, its epydoc
    markup reduced to plain text.
    """
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    return _EPYTEXT.sub(r"\1", " ".join(doc.split()))
