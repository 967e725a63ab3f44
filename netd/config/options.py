"""
The schema language shared by netd's own config keys and every plugin's keys.

A schema is a frozen attrs class: each field is one config key, its annotation is
the type a TOML value must have, its default is the key's default, and
L{option} attaches the help text and range checks.  L{decodeTable} turns a TOML
table into an instance while collecting every problem (with its key path) instead
of stopping at the first, so that C{netd check} can report them all at once.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import os
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Literal, TypeVar, Union

import attrs
import tomli_w

T = TypeVar("T")

KeyPath = tuple[str | int, ...]
Check = Callable[[Any], "str | None"]

_INVALID: Any = object()
"""
Returned by the converters for a value that produced a problem.
"""


def renderPath(path: KeyPath) -> str:
    """
    Spell a key path the way a user reads it: C{services[1].listen[0]}.
    """
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


@attrs.frozen
class Problem:
    """
    One thing wrong with a config, where it is and what was expected.
    """

    path: KeyPath
    message: str

    def render(self, source: str) -> str:
        """
        Format the problem as C{SOURCE: KEY.PATH: message}.
        """
        where = renderPath(self.path)
        return f"{source}: {where}: {self.message}" if where else f"{source}: {self.message}"


class ConfigError(ValueError):
    """
    A config that cannot be used; carries every problem found, not just the first.
    """

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(p.render(source) for p in problems))


class InvalidValue(ValueError):
    """
    Raised by a value type's C{fromConfig} to say what is wrong with a value.
    """


_configFolder: contextvars.ContextVar[str | None] = contextvars.ContextVar("netd config folder", default=None)
"""
The folder of the config file being decoded (see L{relativeTo}); L{None}
when the config has no file.
"""


@contextlib.contextmanager
def relativeTo(folder: str | None) -> Iterator[None]:
    """
    Decode, within the block, the relative paths of a config file from
    C{folder} (the file's folder, made absolute), as nginx and unbound do.

    The folder is context rather than an argument so that every schema, the
    plugins' own and the value types that hold a path (listen strings)
    included, resolves paths the same way without passing it along; only
    L{netd.config.spec.loadConfig} sets it.  L{None}: paths stay as written,
    relative to the working directory.
    """
    token = _configFolder.set(None if folder is None else os.path.abspath(folder))
    try:
        yield
    finally:
        _configFolder.reset(token)


def resolvePath(path: str) -> str:
    """
    A path of the config being decoded, made absolute from the config file's
    folder when it is relative (see L{relativeTo}); as written otherwise.
    """
    folder = _configFolder.get()
    if folder is None or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(folder, path))


class ConfigPath(str):
    """
    A file or folder path of the config: the type of every key that names
    one (certificates, keys, CA files, token files, the state directory, and
    plugins' path options), so that one rule places them all: a relative
    path is resolved from the config file's folder (L{resolvePath}).
    """

    configTypeName: ClassVar[str] = "a path"
    configJsonSchema: ClassVar[dict[str, Any]] = {"type": "string", "minLength": 1}

    @classmethod
    def fromConfig(cls, value: object) -> ConfigPath:
        """
        Check and resolve a path.

        @raise InvalidValue: for anything but a non-empty string without NUL.
        """
        if not isinstance(value, str):
            raise InvalidValue(f"expected {cls.configTypeName}, got {describeValue(value)}")
        if not value.strip():
            raise InvalidValue("expected a path, got an empty string")
        if "\0" in value:
            raise InvalidValue(f"{value!r} holds a NUL character, which no path can")
        return cls(resolvePath(value))

    def toConfig(self) -> str:
        """
        The resolved path, as a plain string.
        """
        return str(self)


@attrs.frozen
class OptionInfo:
    """
    What L{option} attaches to an attrs field: its help text and its checks.
    """

    help: str
    checks: tuple[Check, ...] = ()


def option(default: Any = attrs.NOTHING, *, help: str, checks: tuple[Check, ...] = ()) -> Any:
    """
    Declare one config key of a schema class.

    @param default: the value used when the key is absent; without one the key is
        required.
    @param help: one sentence shown by C{netd plugins} and C{netd check}.
    @param checks: functions that return an error message for a well-typed but
        unacceptable value (see L{between}, L{atLeast}), or L{None}.
    """
    return attrs.field(default=default, metadata={"netd": OptionInfo(help, checks)}, kw_only=True)


def optionInfo(field: attrs.Attribute[Any]) -> OptionInfo:
    """
    The help and checks of a schema field; fields declared without L{option} get none.
    """
    info = field.metadata.get("netd")
    return info if isinstance(info, OptionInfo) else OptionInfo(help="")


@attrs.frozen
class NumberRange:
    """
    A check that a number lies in [low, high] (or is at least C{low} when
    C{high} is L{None}), which also says its bounds as data, so that the JSON
    Schema of the config (L{netd.config.schema}) states the very range C{netd check}
    enforces.
    """

    low: float
    high: float | None = None

    def __call__(self, value: float) -> str | None:
        if self.high is None:
            return None if value >= self.low else f"{value!r} is too small; expected at least {self.low}"
        if self.low <= value <= self.high:
            return None
        return f"{value!r} is out of range; expected {self.low} to {self.high}"

    def jsonSchema(self) -> dict[str, Any]:
        """
        The JSON Schema keywords of the range: C{minimum} and C{maximum}.
        """
        keywords: dict[str, Any] = {"minimum": self.low}
        if self.high is not None:
            keywords["maximum"] = self.high
        return keywords


def between(low: float, high: float) -> Check:
    """
    A check that a number lies in [low, high].
    """
    return NumberRange(low, high)


def atLeast(low: float) -> Check:
    """
    A check that a number is at least C{low}.
    """
    return NumberRange(low)


def closeMatch(word: str, candidates: typing.Iterable[str], then: str = "") -> str:
    """
    A C{"; did you mean 'X'?"} suffix naming the candidate closest to C{word},
    if any is close, followed by C{then}: the rest of the message (what is
    allowed).  After the question C{then} starts a sentence of its own, and
    without a suggestion it follows a C{"; "}, so that every message built
    with it reads "did you mean 'latency'? The types are ...", never "?;".
    """
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    if not matches:
        return f"; {then}" if then else ""
    suggestion = f"; did you mean {matches[0]!r}?"
    return f"{suggestion} {then[:1].upper()}{then[1:]}" if then else suggestion


def unknownKeyProblem(path: KeyPath, key: str, known: typing.Iterable[str]) -> Problem:
    """
    The problem reported for a key that no schema declares.
    """
    knownKeys = sorted(known)
    hint = closeMatch(key, knownKeys) or f"; known keys: {', '.join(knownKeys)}"
    return Problem(path + (key,), "unknown key" + hint)


def describeValue(value: object) -> str:
    """
    Name a TOML value's type and show it, for "expected X, got Y" messages.
    """
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
    name = names.get(type(value), type(value).__name__)
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{name} {shown}"


def _typeName(tp: Any) -> str:
    """
    Say in words which TOML value a Python annotation stands for.
    """
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_typeName(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is tuple:
        return f"an array, each {_typeName(typing.get_args(tp)[0])}"
    if origin in (dict, Mapping):
        return f"a table, each value {_typeName(typing.get_args(tp)[1])}"
    if hasattr(tp, "configTypeName"):
        return str(tp.configTypeName)
    if isinstance(tp, type) and attrs.has(tp):
        return "a table"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(tp, repr(tp))


def convert(value: Any, tp: Any, path: KeyPath, problems: list[Problem]) -> Any:
    """
    Check a TOML value against an annotation and build the Python value.

    Problems go to C{problems}; the return value is then a sentinel that callers
    only pass along.  Types with a C{fromConfig(value)} classmethod parse their
    own values and raise L{InvalidValue} to reject one; types with a
    C{decodeConfig(value, path, problems)} classmethod decode values made of
    several keys (a list of tagged tables) and report each problem at its own
    path; other attrs classes are
    schemas of nested tables, decoded key by key with their own paths.
    """
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        applicable = [
            m
            for m in members
            if typing.get_origin(m) is not Literal or any(type(a) is type(value) for a in typing.get_args(m))
        ]
        if len(applicable) == 1:
            return convert(value, applicable[0], path, problems)
        for member in members:
            attempt: list[Problem] = []
            result = convert(value, member, path, attempt)
            if not attempt:
                return result
        problems.append(Problem(path, f"expected {_typeName(tp)}, got {describeValue(value)}"))
        return _INVALID
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed and type(value) is type(allowed[0]):
            return value
        hint = closeMatch(value, [a for a in allowed if isinstance(a, str)]) if isinstance(value, str) else ""
        problems.append(Problem(path, f"expected {_typeName(tp)}, got {describeValue(value)}{hint}"))
        return _INVALID
    if origin is tuple:
        if not isinstance(value, list):
            problems.append(Problem(path, f"expected {_typeName(tp)}, got {describeValue(value)}"))
            return _INVALID
        (itemType, _) = typing.get_args(tp)
        items = tuple(convert(item, itemType, path + (i,), problems) for i, item in enumerate(value))
        return _INVALID if any(item is _INVALID for item in items) else items
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            problems.append(Problem(path, f"expected {_typeName(tp)}, got {describeValue(value)}"))
            return _INVALID
        (_, itemType) = typing.get_args(tp)
        table = {k: convert(v, itemType, path + (k,), problems) for k, v in value.items()}
        return _INVALID if any(v is _INVALID for v in table.values()) else table
    decodeConfig = getattr(tp, "decodeConfig", None)
    if decodeConfig is not None:
        before = len(problems)
        decoded = decodeConfig(value, path, problems)
        return _INVALID if len(problems) > before else decoded
    if isinstance(tp, type) and attrs.has(tp) and not hasattr(tp, "fromConfig"):
        if not isinstance(value, dict):
            problems.append(Problem(path, f"expected a table, got {describeValue(value)}"))
            return _INVALID
        nested = decodeTable(tp, value, path, problems)
        return _INVALID if nested is None else nested
    fromConfig = getattr(tp, "fromConfig", None)
    if fromConfig is not None:
        try:
            return fromConfig(value)
        except InvalidValue as e:
            problems.append(Problem(path, str(e)))
            return _INVALID
    if tp is float and type(value) is int:
        return float(value)
    if type(value) is not tp:
        problems.append(Problem(path, f"expected {_typeName(tp)}, got {describeValue(value)}"))
        return _INVALID
    return value


def schemaFields(schema: type) -> dict[str, tuple[attrs.Attribute[Any], Any]]:
    """
    The fields of a schema class by key, each with its resolved annotation.
    """
    hints = typing.get_type_hints(schema)
    return {f.name: (f, hints[f.name]) for f in attrs.fields(schema)}


def decodeFields(
    schema: type,
    table: Mapping[str, Any],
    path: KeyPath,
    problems: list[Problem],
    *,
    extraKnown: typing.Iterable[str] = (),
    unknownKeys: bool = True,
) -> dict[str, Any]:
    """
    Check a TOML table against a schema class, key by key.

    @param extraKnown: keys that belong to someone else at this level (the
        service envelope, when decoding a plugin's keys); they are offered as
        "did you mean" candidates.
    @param unknownKeys: whether keys the schema does not declare are reported.
    @return: every key that is valid (or absent with a default) and its value,
        so that rules spanning several keys can still be checked where some
        other key is wrong; the problems go to C{problems}.
    """
    fields = schemaFields(schema)
    if unknownKeys:
        for key in table:
            if key not in fields:
                problems.append(unknownKeyProblem(path, key, set(fields) | set(extraKnown)))
    values = {}
    for key, (field, tp) in fields.items():
        if key not in table:
            if field.default is attrs.NOTHING:
                problems.append(Problem(path + (key,), f"missing required key; expected {_typeName(tp)}"))
            else:
                values[key] = field.default
            continue
        value = convert(table[key], tp, path + (key,), problems)
        if value is _INVALID:
            continue
        messages = [m for m in (check(value) for check in optionInfo(field).checks) if m]
        problems.extend(Problem(path + (key,), m) for m in messages)
        if not messages:
            values[key] = value
    return values


def decodeTable(
    schema: type[T],
    table: Mapping[str, Any],
    path: KeyPath,
    problems: list[Problem],
    *,
    extraKnown: typing.Iterable[str] = (),
) -> T | None:
    """
    Build an instance of a schema class from a TOML table (see L{decodeFields}).
    A schema with a C{crossCheck()} method, returning (key, problem) pairs, has
    its rules that span several keys checked too.

    @return: the instance, or L{None} when the table had problems (all of
        them appended to C{problems}).
    """
    before = len(problems)
    values = decodeFields(schema, table, path, problems, extraKnown=extraKnown)
    if len(problems) > before:
        return None
    instance = schema(**values)
    crossCheck = getattr(instance, "crossCheck", None)
    if crossCheck is not None:
        problems.extend(Problem(path + (key,), message) for key, message in crossCheck())
    return None if len(problems) > before else instance


def toConfig(value: Any) -> Any:
    """
    The TOML form of a decoded value: the inverse of L{convert}.

    Schema instances become tables of every key (defaults included), so the result
    shows the effective configuration; value types give their own C{toConfig()}.
    """
    if hasattr(value, "toConfig"):
        return value.toConfig()
    if attrs.has(type(value)):
        return {
            f.name: toConfig(getattr(value, f.name))
            for f in attrs.fields(type(value))
            if getattr(value, f.name) is not None
        }
    if isinstance(value, (tuple, list)):
        return [toConfig(v) for v in value]
    if isinstance(value, dict):
        return {k: toConfig(v) for k, v in value.items()}
    return value


def describeSchema(schema: type) -> list[tuple[str, str, str, str]]:
    """
    One row per key of a schema: key, type in words, default in TOML, help.

    Used by C{netd plugins} and the README's reference, so both say the same.
    """
    rows = []
    for key, (field, tp) in schemaFields(schema).items():
        if field.default is attrs.NOTHING:
            default = "(required)"
        elif field.default is None:
            default = "(unset)"
        else:
            default = _tomlValue(toConfig(field.default))
        rows.append((key, _typeName(tp), default, optionInfo(field).help))
    return rows


def _tomlValue(value: Any) -> str:
    """
    A single TOML value as it would appear on the right of C{key = }.
    """
    if isinstance(value, list):
        return "[" + ", ".join(_tomlValue(v) for v in value) + "]"
    if isinstance(value, dict):
        keys = (tomli_w.dumps({k: 0}).partition("=")[0].strip() for k in value)
        return "{" + ", ".join(f"{k} = {_tomlValue(v)}" for k, v in zip(keys, value.values(), strict=True)) + "}"
    return tomli_w.dumps({"v": value}).partition("=")[2].strip()
