"""
The config file: TOML in, validated frozen specs out, or every problem at once.

A service table is decoded in two phases: first the envelope that the core owns
(L{ServiceEnvelope}: name, plugin, listen, limits, framing, tls), then the remaining
keys through the schema of the plugin it names.  Cross-key rules (unique names,
transports the plugin serves, the framing's limits, and a plugin's keys against
the service's listeners through its options' C{checkShape}) are checked last.  Nothing is
listened on before all of it passes.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from importlib.resources import files
from typing import Any, ClassVar, Literal, Protocol

import attrs

from netd.config.accounts import Group, User
from netd.config.listen import ListenAddress, splitDescription
from netd.config.options import (
    ConfigError,
    ConfigPath,
    InvalidValue,
    KeyPath,
    Problem,
    between,
    closeMatch,
    decodeFields,
    decodeTable,
    describeValue,
    option,
    relativeTo,
    schemaFields,
    toConfig,
)
from netd.events import DEFAULT_SIZE as DEFAULT_EVENTS
from netd.events import LARGEST_SIZE as LARGEST_EVENTS
from netd.faults.base import ServiceShape
from netd.faults.spec import FaultList
from netd.stream.framing import FRAMINGS
from netd.stream.proxyheader import DEFAULT_TRUSTED, checkTrustedSources
from netd.tls.options import TLSOptions

DEFAULT_CONFIG_NAME = "<embedded default>"
DEFAULT_MAX_FRAME = 65536
LARGEST_MAX_FRAME = 64 * 2**20

LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warn", "error", "critical"]


def isLocalOnly(text: str) -> bool:
    """
    Whether a stream listen string can only be reached from this host: a
    C{unix:} socket (or a C{systemd:} one of C{domain=UNIX}), or a TCP address
    on a loopback interface.  Anything else, C{systemd:} INET sockets and
    endpoint types netd does not know included, counts as reachable from the
    network.
    """
    parts = splitDescription(text)
    kind = parts[0]
    keywords = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    if kind == "unix":
        return True
    if kind == "systemd":
        return keywords.get("domain") == "UNIX"
    if kind == "haproxy":
        return isLocalOnly(text.split(":", 1)[1]) if ":" in text else False
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    interface = keywords.get("interface")
    positional = [p for p in parts[1:] if "=" not in p]
    if interface is None and kind in ("tcp", "tcp6") and len(positional) > 1:
        interface = positional[1]
    try:
        return interface is not None and ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


@attrs.frozen
class AdminAddress:
    """
    The value of C{[daemon] admin}: where the control API listens, or off.

    @ivar address: the stream listen string; L{None} when C{admin = false}.
    """

    address: ListenAddress | None

    configTypeName: ClassVar[str] = (
        "a stream listen string such as 'tcp:8053:interface=127.0.0.1' or 'unix:/run/netd/admin.sock', or false"
    )
    configJsonSchema: ClassVar[dict[str, Any]] = {
        "anyOf": [{"type": "string", "pattern": "^[a-z][a-z0-9]*:", "not": {"pattern": "^udp:"}}, {"const": False}]
    }

    @classmethod
    def fromConfig(cls, value: object) -> AdminAddress:
        """
        Validate C{admin}: a stream listen string, or C{false}.

        @raise InvalidValue: naming what is wrong with it.
        """
        if value is False:
            return cls(None)
        if value is True:
            raise InvalidValue(f"true is not an address; expected {cls.configTypeName}")
        if not isinstance(value, str):
            raise InvalidValue(f"expected {cls.configTypeName}, got {describeValue(value)}")
        address = ListenAddress.fromConfig(value)
        if address.transport != "stream":
            raise InvalidValue(
                f"{value!r}: the control API is HTTP, which needs a stream address (tcp:, tcp6:, unix:, systemd:), not udp:"
            )
        if address.reusePort:
            raise InvalidValue(
                f"{value!r}: an API answers for one netd, so it cannot share its port (reuseport=yes); give each "
                "netd its own address"
            )
        return cls(address)

    def toConfig(self) -> str | bool:
        """
        The listen string, or C{false}.
        """
        return False if self.address is None else self.address.text

    @property
    def localOnly(self) -> bool:
        """
        Whether only this host can reach the API (see L{isLocalOnly}); true when it is off.
        """
        return self.address is None or isLocalOnly(self.address.text)


@attrs.frozen
class DaemonSpec:
    """
    The C{[daemon]} table: settings of the process rather than of one service.
    """

    log_format: LogFormat = option("text", help="'text' for readable lines, 'json' for one JSON object per line.")
    log_level: LogLevel = option("info", help="The least severe log level written.")
    shutdown_timeout: float = option(
        10.0,
        help="Seconds open connections get to finish after SIGTERM/SIGINT before they are closed.",
        checks=(between(0, 3600),),
    )
    lameduck: float = option(
        0.0,
        help="Seconds netd keeps serving after SIGTERM/SIGINT with /ready answering 503, so that load balancers "
        "stop sending first; then listeners close and open connections get shutdown_timeout.",
        checks=(between(0, 3600),),
    )
    state_dir: ConfigPath | None = option(
        None,
        help='Where netd keeps state (the certificates of tls certificate = "auto", in its tls/ folder); '
        "when unset $STATE_DIRECTORY (systemd), else $XDG_STATE_HOME/netd, else ~/.local/state/netd.",
    )
    admin: AdminAddress = option(
        AdminAddress(None),
        help="Where the HTTP control API listens (/health, /ready, /services, /metrics, /reload): a stream listen "
        "string such as 'tcp:8053:interface=127.0.0.1' (the embedded default config's), 'tcp:0:interface=127.0.0.1' "
        "(a port the system picks, reported in the log and the ports file) or 'unix:/run/netd/admin.sock'. "
        "Unset or false, there is no control API, so netds whose services use different ports start side by side. "
        "An address reachable from other hosts needs admin_token_file.",
    )
    toxiproxy: AdminAddress = option(
        AdminAddress(None),
        help="Where the toxiproxy-compatible HTTP API listens (docs/toxiproxy.md): a stream listen string such as "
        "'tcp:8474:interface=127.0.0.1' (toxiproxy's port, where its clients look by default) or "
        "'tcp:0:interface=127.0.0.1' (reported in the log and the ports file). Unset or false, there is none. "
        "Like toxiproxy's, it has no authentication: netd warns when other hosts can reach it.",
    )
    admin_token_file: ConfigPath | Literal[False] | None = option(
        None,
        help="A file holding the token the control API requires as 'Authorization: Bearer TOKEN' "
        "(surrounding whitespace ignored, at most 4096 bytes, readable by its owner only), read when netd starts "
        "(before it drops privileges, so it may be readable by root only) and again on every reload; every "
        "endpoint but /health, /ready and /openapi.json needs it. Unset, a TCP control API gets a token netd makes in "
        "state_dir/admin.token, required for every request that changes something (POST, PUT, PATCH, DELETE); "
        "false turns that off (loopback or unix: only).",
    )
    admin_hosts: tuple[str, ...] = option(
        (),
        help="Host names (or addresses) the control API answers to besides localhost, loopback addresses and the "
        "address it listens on (the Host header of every request is checked, against DNS rebinding).",
        checks=(lambda v: next((f"{h!r} is not a host name" for h in v if not _isHostName(h)), None),),
    )
    admin_max_connections: int = option(
        64,
        help="Control API connections open at once; a further one closes the oldest that is not being answered, "
        "or is answered 503 when all are; both are counted.",
        checks=(between(1, 100_000),),
    )
    admin_group: Group | None = option(
        None,
        help="With a unix: control API, the group that may use it: the socket is made mode 0660 with this "
        "group; without it, 0600 (its owner only).",
    )
    user: User | None = option(
        None,
        help="Started as root, listen on every address (ports below 1024 included), then run as this user "
        "(a name or numeric id from the user database), supplementary groups cleared, before serving any client.",
    )
    group: Group | None = option(
        None,
        help="The group to run as (a name or numeric id) with user; the user's own group when unset.",
    )
    watch_config: bool = option(
        False,
        help="Reload the config file when its content changes, as SIGHUP does (a bad file changes nothing): "
        "netd reads it through its path every watch_interval and compares a SHA-256 of the bytes, so the "
        "symlink swap of a Kubernetes ConfigMap volume is seen. Needs a config file; a change of this key "
        "takes effect only when netd restarts.",
    )
    watch_interval: float = option(
        5.0,
        help="Seconds between two reads of the config file with watch_config, each wait drawn between half and "
        "one and a half times this (so that netds started together do not reload together); applied by a reload.",
        checks=(between(0.1, 3600),),
    )

    def crossCheck(self) -> list[tuple[str, str]]:
        """
        Rules that span several keys: (key, problem) pairs.
        """
        problems = []
        text = self.admin.address.text if self.admin.address is not None else ""
        if not self.admin.localOnly and not self.admin_token_file:
            problems.append(
                (
                    "admin",
                    f"{text!r} can be reached from other hosts, so the control API needs a token: set "
                    "admin_token_file to a file holding a secret, or listen on 127.0.0.1, ::1 or a unix: socket",
                )
            )
        if self.group is not None and self.user is None:
            problems.append(
                (
                    "group",
                    f"[daemon] group needs [daemon] user: with group {self.group.value!r} alone netd would keep "
                    "running as uid 0 (root, with root's rights) while only its group changed; set user too",
                )
            )
        if self.admin_group is not None and splitDescription(text)[0] != "unix":
            problems.append(
                (
                    "admin_group",
                    f"only a unix: control API has a socket file to give a group; admin is {text or 'false'!r}",
                )
            )
        return problems


def _isHostName(text: str) -> bool:
    """
    Whether C{text} can be a C{Host} header's name: an IP address, or
    dot-separated labels of letters, digits and hyphens.
    """
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    labels = text.rstrip(".").split(".")
    return (
        bool(text)
        and len(text) <= 253
        and all(0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii() for label in labels)
    )


class PluginSource(Protocol):
    """
    What decoding a config needs of the plugin registry
    (L{netd.registry.PluginRegistry}), declared here because the registry
    reads this module's envelope keys to check the plugins it loads.
    """

    def get(self, name: str) -> Any | None:
        """
        The plugin called C{name}, if one loads.
        """

    @property
    def plugins(self) -> Mapping[str, Any]:
        """
        Every plugin that loaded, by name.
        """

    @property
    def broken(self) -> Mapping[str, str]:
        """
        Why each plugin that did not load did not, by its source.
        """


@attrs.frozen
class ServiceEnvelope:
    """
    The keys every service has, whatever its plugin.
    """

    name: str = option(help="Unique name of the service, used in logs, counters and the ports file.")
    plugin: str = option(help="Which plugin serves it (see `netd plugins`).")
    listen: tuple[ListenAddress, ...] = option(
        help="Addresses to serve: Twisted endpoint strings (tcp:, tcp6:, unix:, ...) and udp:PORT[:interface=ADDR].",
    )
    enabled: bool = option(True, help="false keeps the service in the file without running it.")
    max_connections: int | None = option(
        None,
        help="Stream connections open at once; unset, half of netd's open-file limit, at most 16384. "
        "At the limit a new connection evicts the stalest open one (see evict_idle), or is refused; either is counted.",
        checks=(between(1, 1_000_000),),
    )
    idle_timeout: float = option(
        300.0,
        help="Seconds without traffic either way before a stream connection is closed; 0 never closes one.",
        checks=(between(0, 86400 * 7),),
    )
    min_idle_timeout: float = option(
        10.0,
        help="The idle timeout at max_connections: from 75% of max_connections open, idle_timeout shrinks "
        "step by step to this (never above idle_timeout).",
        checks=(between(0.1, 86400 * 7),),
    )
    evict_idle: bool = option(
        True,
        help="At max_connections, close the open connection longest without progress (still in its TLS handshake "
        "or silent, then the longest without traffic) to admit a new one, counted as connections_evicted; "
        "false refuses the new one instead (connections_refused).",
    )
    framing: str | None = option(
        None,
        help="How streams are cut into frames: " + ", ".join(FRAMINGS) + "; the plugin's default when unset.",
    )
    max_frame: int | None = option(
        None,
        help=f"Largest frame accepted from a peer, in bytes; {DEFAULT_MAX_FRAME} (or the framing's "
        "largest, if smaller) when unset. Not used with raw framing.",
        checks=(between(1, LARGEST_MAX_FRAME),),
    )
    proxy_trusted: tuple[str, ...] = option(
        DEFAULT_TRUSTED,
        help="Peers whose PROXY headers haproxy: listeners believe: IP networks, and 'unix:' for every unix "
        "socket peer; a connection from any other is closed when accepted and counted as proxy_headers_untrusted.",
        checks=(checkTrustedSources,),
    )
    tls: TLSOptions | None = option(
        None,
        help="Terminate TLS on the service's stream listeners (a table: certificate, private_key, ...; "
        'tls = { certificate = "auto" } for a development certificate).',
    )
    events: int = option(
        DEFAULT_EVENTS,
        help="Recent events (connections closed, DNS queries, faults applied) the service keeps for "
        "GET /services/NAME/events; the oldest go first; 0 keeps none.",
        checks=(between(0, LARGEST_EVENTS),),
    )
    faults: FaultList = option(
        FaultList(),
        help="Faults the service commits on purpose, for testing clients: an array of tables, each with a type "
        "(latency, slice, reset_after, tls_abort, drop, split_frame, ...) and that type's keys; none by default.",
    )


ENVELOPE_KEYS = frozenset(schemaFields(ServiceEnvelope))


@attrs.frozen
class ServiceSpec:
    """
    One validated service: the envelope with its defaults resolved, the plugin,
    and the plugin's own options.
    """

    name: str
    plugin: Any
    listen: tuple[ListenAddress, ...]
    enabled: bool
    max_connections: int | None
    idle_timeout: float
    framing: str | None
    max_frame: int | None
    options: Any
    tls: TLSOptions | None = None
    events: int = DEFAULT_EVENTS
    faults: FaultList = FaultList()
    proxy_trusted: tuple[str, ...] = DEFAULT_TRUSTED
    min_idle_timeout: float = 10.0
    evict_idle: bool = True

    @property
    def shape(self) -> ServiceShape:
        """
        What the service's faults need to know of it (see L{ServiceShape}).
        """
        return _serviceShape(self.listen, self.tls is not None, self.framing, self.plugin)

    def toConfig(self) -> dict[str, Any]:
        """
        The service as a normalized TOML table: every key, defaults included.
        """
        table = {
            "name": self.name,
            "plugin": self.plugin.name,
            "listen": toConfig(self.listen),
            "enabled": self.enabled,
            "idle_timeout": self.idle_timeout,
            "min_idle_timeout": self.min_idle_timeout,
            "evict_idle": self.evict_idle,
        }
        if self.max_connections is not None:
            table["max_connections"] = self.max_connections
        if self.framing is not None:
            table["framing"] = self.framing
        if self.max_frame is not None:
            table["max_frame"] = self.max_frame
        table["proxy_trusted"] = list(self.proxy_trusted)
        if self.tls is not None:
            table["tls"] = toConfig(self.tls)
        table["events"] = self.events
        table["faults"] = self.faults.toConfig()
        table.update(toConfig(self.options))
        return table


@attrs.frozen
class NetdConfig:
    """
    A whole validated config file.

    @ivar source: the file it came from, for messages.
    """

    source: str
    daemon: DaemonSpec
    services: tuple[ServiceSpec, ...]
    digest: str = attrs.field(default="", eq=False)
    """
    The SHA-256 (hex) of the file's bytes, by which C{[daemon] watch_config}
    tells a changed file from the running one; empty for the embedded default.
    """

    def toConfig(self) -> dict[str, Any]:
        """
        The normalized config as TOML data, defaults filled in.
        """
        return {"daemon": toConfig(self.daemon), "services": [s.toConfig() for s in self.services]}


def _serviceShape(listen: tuple[ListenAddress, ...], tls: bool, framing: str | None, plugin: Any) -> ServiceShape:
    """
    The shape of a service with these listen addresses, TLS or not, framing
    and plugin (which may declare C{relaysFrames}, an optional attribute).
    """
    return ServiceShape(
        streams=any(a.transport == "stream" for a in listen),
        datagrams=any(a.transport == "datagram" for a in listen),
        tls=tls,
        framing=framing,
        relays=getattr(plugin, "relaysFrames", False) is True,
    )


def _resolveFraming(
    envelope: dict[str, Any], plugin: Any, path: KeyPath, problems: list[Problem]
) -> tuple[str | None, int | None]:
    """
    The framing and frame limit a service runs with, from its valid envelope
    keys and its plugin.
    """
    if not plugin.framings:
        for key in ("framing", "max_frame"):
            if envelope.get(key) is not None:
                problems.append(
                    Problem(path + (key,), f"plugin {plugin.name!r} serves no streams, so it takes no {key}")
                )
        return None, None
    framing = envelope.get("framing") or plugin.framings[0]
    maxFrame = envelope.get("max_frame")
    if framing not in plugin.framings:
        problems.append(
            Problem(
                path + ("framing",),
                f"plugin {plugin.name!r} does not support framing {framing!r}; "
                f"expected one of {', '.join(plugin.framings)}{closeMatch(framing, plugin.framings)}",
            )
        )
        return None, None
    largest = FRAMINGS[framing].largest
    if largest is None:
        if maxFrame is not None:
            problems.append(Problem(path + ("max_frame",), "raw framing has no frames to limit; remove max_frame"))
        return framing, None
    if maxFrame is None:
        return framing, min(DEFAULT_MAX_FRAME, largest)
    if maxFrame > largest:
        problems.append(
            Problem(path + ("max_frame",), f"{maxFrame} is more than {framing} framing can carry ({largest})")
        )
    return framing, maxFrame


def _decodeService(table: Any, path: KeyPath, registry: PluginSource, problems: list[Problem]) -> ServiceSpec | None:
    """
    Decode one C{[[services]]} table: envelope first, then the plugin's keys.
    """
    if not isinstance(table, dict):
        problems.append(Problem(path, f"expected a table, got {describeValue(table)}"))
        return None
    envelopeTable = {k: v for k, v in table.items() if k in ENVELOPE_KEYS}
    pluginTable = {k: v for k, v in table.items() if k not in ENVELOPE_KEYS}
    before = len(problems)
    envelope = decodeFields(ServiceEnvelope, envelopeTable, path, problems, unknownKeys=False)
    pluginName = table.get("plugin")
    plugin = registry.get(pluginName) if isinstance(pluginName, str) else None
    if plugin is None:
        if isinstance(pluginName, str):
            known = sorted(registry.plugins)
            message = f"unknown plugin {pluginName!r}" + closeMatch(
                pluginName, known, then=f"known plugins: {', '.join(known)}"
            )
            if registry.broken:
                message += "; plugins that failed to load: " + "; ".join(
                    f"{source}: {why}" for source, why in sorted(registry.broken.items())
                )
            problems.append(Problem(path + ("plugin",), message))
        return None
    options = decodeTable(plugin.optionsType, pluginTable, path, problems, extraKnown=ENVELOPE_KEYS)
    listen = envelope.get("listen", ())
    for i, address in enumerate(listen):
        if address.transport not in plugin.transports:
            problems.append(
                Problem(
                    path + ("listen", i),
                    f"plugin {plugin.name!r} does not serve {address.transport}s; "
                    f"it serves {', '.join(sorted(plugin.transports))} ({address.text!r})",
                )
            )
    if "listen" in envelope and not listen:
        problems.append(Problem(path + ("listen",), "expected at least one listen address"))
    shapeBefore = len(problems)
    framing, maxFrame = _resolveFraming(envelope, plugin, path, problems)
    _checkTLS(table, envelope, plugin, path, problems)
    checkShape = getattr(options, "checkShape", None)
    if checkShape is not None and listen:
        # A plugin's keys that depend on the service's listeners: (key, problem) pairs.
        shape = _serviceShape(listen, envelope.get("tls") is not None, framing, plugin)
        problems.extend(Problem(path + (key,), message) for key, message in checkShape(shape))
    if envelope.get("faults") and listen and len(problems) == shapeBefore:
        shape = _serviceShape(listen, envelope.get("tls") is not None, framing, plugin)
        problems.extend(envelope["faults"].misfits(shape, path + ("faults",)))
    if len(problems) > before:
        return None
    return ServiceSpec(
        name=envelope["name"],
        plugin=plugin,
        listen=listen,
        enabled=envelope["enabled"],
        max_connections=envelope["max_connections"],
        idle_timeout=envelope["idle_timeout"],
        min_idle_timeout=envelope["min_idle_timeout"],
        evict_idle=envelope["evict_idle"],
        framing=framing,
        max_frame=maxFrame,
        options=options,
        tls=envelope["tls"],
        events=envelope["events"],
        faults=envelope["faults"],
        proxy_trusted=envelope["proxy_trusted"],
    )


def _checkTLS(
    table: dict[str, Any], envelope: dict[str, Any], plugin: Any, path: KeyPath, problems: list[Problem]
) -> None:
    """
    The rules of the C{tls} table that involve other keys: TLS needs a stream
    listener (on a service with UDP and TCP listeners it applies to TCP only),
    and a plugin that declares C{requiresTLS} needs a C{tls} table.
    """
    listen = envelope.get("listen", ())
    if envelope.get("tls") is not None and listen and not any(a.transport == "stream" for a in listen):
        problems.append(
            Problem(
                path + ("tls",),
                "TLS applies to stream listeners (tcp:, unix:, ...), and this service listens only on udp: addresses",
            )
        )
    if plugin.requiresTLS and "tls" not in table:
        problems.append(
            Problem(
                path + ("tls",),
                f"missing; plugin {plugin.name!r} serves only over TLS: add a tls table, "
                'e.g. tls = { certificate = "auto" } or tls = { certificate = "cert.pem", private_key = "key.pem" }',
            )
        )


def parseConfig(data: dict[str, Any], source: str, registry: PluginSource) -> NetdConfig:
    """
    Validate parsed TOML.

    @raise ConfigError: with every problem found.
    """
    problems: list[Problem] = []
    for key in data:
        if key not in ("daemon", "services"):
            problems.append(
                Problem(
                    (key,),
                    f"unknown top-level key{closeMatch(key, ['daemon', 'services']) or '; expected [daemon] and [[services]]'}",
                )
            )
    daemonTable = data.get("daemon", {})
    daemon = None
    if isinstance(daemonTable, dict):
        daemon = decodeTable(DaemonSpec, daemonTable, ("daemon",), problems)
    else:
        problems.append(Problem(("daemon",), "expected a table: [daemon]"))
    serviceTables = data.get("services", [])
    services: list[ServiceSpec] = []
    if not isinstance(serviceTables, list):
        problems.append(Problem(("services",), "expected an array of tables: [[services]]"))
        serviceTables = []
    seen: dict[str, int] = {}
    for i, table in enumerate(serviceTables):
        spec = _decodeService(table, ("services", i), registry, problems)
        name = table.get("name") if isinstance(table, dict) else None
        if isinstance(name, str):
            if name in seen:
                problems.append(
                    Problem(("services", i, "name"), f"duplicate service name {name!r}; services[{seen[name]}] has it")
                )
            else:
                seen[name] = i
        if spec is not None:
            services.append(spec)
    # With a control API or the toxiproxy API, services can come at runtime.
    runtimeOnly = daemon is not None and (daemon.admin.address is not None or daemon.toxiproxy.address is not None)
    if not problems and not runtimeOnly and not any(s.enabled for s in services):
        problems.append(
            Problem(
                ("services",),
                "no enabled service; add a [[services]] table, or set [daemon] admin (POST /services) or "
                "[daemon] toxiproxy (its proxies) to add them at runtime",
            )
        )
    if problems or daemon is None:
        raise ConfigError(source, problems)
    return NetdConfig(source=source, daemon=daemon, services=tuple(services))


def loadConfig(path: str | None, registry: PluginSource) -> NetdConfig:
    """
    Read and validate a config file, or the embedded default when C{path} is L{None}.

    @raise ConfigError: when the file cannot be read, is not TOML, or is invalid.
    """
    digest = ""
    if path is None:
        text = files("netd.config").joinpath("default.toml").read_text(encoding="utf-8")
        source = DEFAULT_CONFIG_NAME
    else:
        source = path
        try:
            with open(path, "rb") as f:
                content = f.read()
            text = io.StringIO(content.decode("utf-8"), newline=None).read()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(source, [Problem((), f"cannot read the file: {e}")]) from None
        digest = hashlib.sha256(content).hexdigest()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, [Problem((), f"not valid TOML: {e}")]) from None
    with relativeTo(None if path is None else os.path.dirname(path)):
        return attrs.evolve(parseConfig(data, source, registry), digest=digest)
