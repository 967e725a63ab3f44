"""
Config validation, table-driven in the CoreDNS style: a TOML snippet goes in, and
the test names the file, the key path, what was given and what was expected in
the message that comes out.
"""

from __future__ import annotations

import json
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest
import tomli_w
from zope.interface import implementer

from netd.config.options import ConfigError, renderPath
from netd.config.spec import (
    DEFAULT_CONFIG_NAME,
    DaemonSpec,
    NetdConfig,
    loadConfig,
    parseConfig,
)
from netd.interfaces import IProtocolPlugin
from netd.registry import LoadedPlugin, PluginRegistry, discoverPlugins

SOURCE = "test.toml"

REGISTRY = discoverPlugins()
"""
The plugins installed in the test environment: the built-in echo and the
third-party reverse (stream only; prefix: str, repeat: int 1..10).
"""

ECHO = """
[[services]]
name = "echo"
plugin = "echo"
listen = ["tcp:0"]
"""

REVERSE = """
[[services]]
name = "rev"
plugin = "reverse"
listen = ["tcp:0"]
"""


def parse(text: str, registry: PluginRegistry = REGISTRY) -> NetdConfig:
    """
    Validate a TOML snippet as if it were the file C{test.toml}.
    """
    return parseConfig(tomllib.loads(textwrap.dedent(text)), SOURCE, registry)


def problemLines(text: str, registry: PluginRegistry = REGISTRY) -> list[str]:
    """
    The rendered problems of a snippet that must be refused, one per line.
    """
    with pytest.raises(ConfigError) as info:
        parse(text, registry)
    assert info.value.source == SOURCE
    lines = str(info.value).splitlines()
    assert len(lines) == len(info.value.problems)
    return lines


def service(listen: str = '["tcp:0"]', plugin: str = "echo", name: str = "svc", **extra: str) -> str:
    """
    A C{[[services]]} table; C{extra} values are TOML written as they appear in the file.
    """
    lines = ["[[services]]", f'name = "{name}"', f'plugin = "{plugin}"', f"listen = {listen}"]
    lines += [f"{key} = {value}" for key, value in extra.items()]
    return "\n" + "\n".join(lines) + "\n"


BAD_CONFIGS = [
    # Unknown keys: a "did you mean" when one is close, the known keys otherwise.
    pytest.param(
        "bogus = 1\n" + ECHO,
        "bogus",
        ["unknown top-level key", "expected [daemon] and [[services]]"],
        id="unknown-top-level-key",
    ),
    pytest.param(
        "servics = 1\n" + ECHO,
        "servics",
        ["unknown top-level key", "did you mean 'services'?"],
        id="unknown-top-level-key-did-you-mean",
    ),
    pytest.param(
        "[daemon]\nshutdown_timout = 3\n" + ECHO,
        "daemon.shutdown_timout",
        ["unknown key", "did you mean 'shutdown_timeout'?"],
        id="daemon-unknown-key-did-you-mean",
    ),
    pytest.param(
        '[daemon]\ncolour = "blue"\n' + ECHO,
        "daemon.colour",
        ["unknown key", "known keys: ", "log_format, log_level, shutdown_timeout"],
        id="daemon-unknown-key-lists-known",
    ),
    pytest.param(
        service(proxy_trusted='["10.0.0.0/8", "lb.example"]'),
        "services[0].proxy_trusted",
        ["[1] 'lb.example' is not an IP network", "'unix:'"],
        id="proxy-trusted-not-a-network",
    ),
    pytest.param(
        service(max_conections="3"),
        "services[0].max_conections",
        ["unknown key", "did you mean 'max_connections'?"],
        id="service-unknown-key-did-you-mean",
    ),
    pytest.param(
        service(plugin="reverse", prefx='"> "'),
        "services[0].prefx",
        ["unknown key", "did you mean 'prefix'?"],
        id="plugin-unknown-key-did-you-mean",
    ),
    pytest.param(
        service(colour='"blue"'),
        "services[0].colour",
        [
            "unknown key",
            "known keys: burst, enabled, events, ",
            "idle_timeout, listen, max_connections, max_frame, min_idle_timeout, min_source_port, name, plugin",
        ],
        id="service-unknown-key-lists-known",
    ),
    pytest.param(
        service(plugin="reverse", colour='"blue"'),
        "services[0].colour",
        [
            "unknown key",
            "known keys: enabled, events, ",
            "idle_timeout, listen, max_connections, max_frame, min_idle_timeout, name, plugin, prefix, proxy_trusted, repeat",
        ],
        id="plugin-unknown-key-lists-plugin-keys",
    ),
    # Required keys.
    pytest.param(
        '[[services]]\nplugin = "echo"\nlisten = ["tcp:0"]\n',
        "services[0].name",
        ["missing required key", "expected a string"],
        id="missing-name",
    ),
    pytest.param(
        '[[services]]\nname = "echo"\nlisten = ["tcp:0"]\n',
        "services[0].plugin",
        ["missing required key", "expected a string"],
        id="missing-plugin",
    ),
    pytest.param(
        '[[services]]\nname = "echo"\nplugin = "echo"\n',
        "services[0].listen",
        ["missing required key", "expected an array, each a listen string"],
        id="missing-listen",
    ),
    # Wrong types.
    pytest.param(
        service(listen='"tcp:7007"'),
        "services[0].listen",
        ["expected an array, each a listen string such as 'tcp:7007:interface=127.0.0.1'", "got string 'tcp:7007'"],
        id="listen-is-a-string",
    ),
    pytest.param(
        service(listen="[7007]"),
        "services[0].listen[0]",
        ["expected a listen string", "got 7007"],
        id="listen-item-is-a-number",
    ),
    pytest.param(
        service(max_connections='"10"'),
        "services[0].max_connections",
        ["expected an integer", "got string '10'"],
        id="max-connections-is-a-string",
    ),
    pytest.param(
        service(max_connections="1.5"),
        "services[0].max_connections",
        ["expected an integer", "got float 1.5"],
        id="max-connections-is-a-float",
    ),
    pytest.param(
        service(enabled='"yes"'),
        "services[0].enabled",
        ["expected a boolean", "got string 'yes'"],
        id="enabled-is-a-string",
    ),
    pytest.param(
        service(idle_timeout="true"),
        "services[0].idle_timeout",
        ["expected a number", "got boolean True"],
        id="idle-timeout-is-a-boolean",
    ),
    pytest.param(
        '[daemon]\nlog_format = "jsn"\n' + ECHO,
        "daemon.log_format",
        ["expected one of 'text', 'json'", "got string 'jsn'", "did you mean 'json'?"],
        id="log-format-not-in-literal",
    ),
    pytest.param(
        '[daemon]\nlog_level = "verbose"\n' + ECHO,
        "daemon.log_level",
        ["expected one of 'debug', 'info', 'warn', 'error', 'critical'", "got string 'verbose'"],
        id="log-level-not-in-literal",
    ),
    pytest.param(
        "daemon = 3\n" + ECHO,
        "daemon",
        ["expected a table: [daemon]"],
        id="daemon-not-a-table",
    ),
    pytest.param(
        "services = 3\n",
        "services",
        ["expected an array of tables: [[services]]"],
        id="services-not-an-array",
    ),
    pytest.param(
        "services = [1]\n",
        "services[0]",
        ["expected a table"],
        id="service-not-a-table",
    ),
    # Names and plugins.
    pytest.param(
        service(name="dup") + service(name="other", listen='["tcp:1"]') + service(name="dup", listen='["tcp:2"]'),
        "services[2].name",
        ["duplicate service name 'dup'", "services[0] has it"],
        id="duplicate-service-name",
    ),
    pytest.param(
        service(plugin="ecko"),
        "services[0].plugin",
        ["unknown plugin 'ecko'", "did you mean 'echo'? Known plugins: ", "reverse"],
        id="unknown-plugin-did-you-mean",
    ),
    pytest.param(
        service(plugin="reverse", listen='["tcp:0", "udp:0"]'),
        "services[0].listen[1]",
        ["plugin 'reverse' does not serve datagrams", "it serves stream", "'udp:0'"],
        id="plugin-does-not-serve-udp",
    ),
    # Listen strings.
    pytest.param(
        service(listen='["tcpp:80"]'),
        "services[0].listen[0]",
        ["'tcpp:80' is not a valid endpoint string", "Unknown endpoint type: 'tcpp'"],
        id="endpoint-unknown-type",
    ),
    pytest.param(
        service(listen='["tcp:notaport"]'),
        "services[0].listen[0]",
        ["'tcp:notaport': port 'notaport' is not a number"],
        id="endpoint-port-not-a-number",
    ),
    pytest.param(
        service(listen='["udp:"]'),
        "services[0].listen[0]",
        ["'udp:' lacks a port", "expected udp:PORT[:interface=ADDR]"],
        id="udp-without-port",
    ),
    pytest.param(
        service(listen='["udp:abc"]'),
        "services[0].listen[0]",
        ["port 'abc' is not a number"],
        id="udp-port-not-a-number",
    ),
    pytest.param(
        service(listen='["udp:53:iface=1.2.3.4"]'),
        "services[0].listen[0]",
        ["'udp:53:iface=1.2.3.4'", "unknown argument 'iface=1.2.3.4'", "expected udp:PORT[:interface=ADDR]"],
        id="udp-unknown-argument",
    ),
    pytest.param(
        service(listen='["udp:53:interface=nope"]'),
        "services[0].listen[0]",
        ["interface 'nope' is not an IP address"],
        id="udp-interface-not-an-ip",
    ),
    pytest.param(
        service(listen='["tcp:7007:interface=not-an-ip"]'),
        "services[0].listen[0]",
        ["interface 'not-an-ip' is not an IP address"],
        id="tcp-interface-not-an-ip",
    ),
    pytest.param(
        service(listen='["tcp6:7007:interface=127.0.0.1"]'),
        "services[0].listen[0]",
        ["interface '127.0.0.1' is not an IPv6 address"],
        id="tcp6-interface-is-ipv4",
    ),
    pytest.param(
        service(listen='["tcp:70000"]'),
        "services[0].listen[0]",
        ["port 70000 is out of range", "expected 0 to 65535"],
        id="tcp-port-too-big",
    ),
    pytest.param(
        service(listen='["tcp:port=99999:interface=127.0.0.1"]'),
        "services[0].listen[0]",
        ["port 99999 is out of range", "expected 0 to 65535"],
        id="tcp-port-keyword-too-big",
    ),
    pytest.param(
        service(listen='["udp:-1"]'),
        "services[0].listen[0]",
        ["port -1 is out of range", "expected 0 to 65535"],
        id="udp-port-negative",
    ),
    pytest.param(
        service(listen='["udp:65536"]'),
        "services[0].listen[0]",
        ["port 65536 is out of range", "expected 0 to 65535"],
        id="udp-port-too-big",
    ),
    pytest.param(
        service(name="a") + service(name="b", listen='["tcp:1", "tcpp:80"]'),
        "services[1].listen[1]",
        ["'tcpp:80' is not a valid endpoint string"],
        id="second-service-second-address",
    ),
    pytest.param(
        service(listen="[]"),
        "services[0].listen",
        ["expected at least one listen address"],
        id="empty-listen",
    ),
    # Framing and frame limits.
    pytest.param(
        service(plugin="reverse", framing='"raw"'),
        "services[0].framing",
        ["plugin 'reverse' does not support framing 'raw'", "expected one of line, netstring, u16, u32"],
        id="framing-not-supported-by-plugin",
    ),
    pytest.param(
        service(framing='"netstrng"'),
        "services[0].framing",
        [
            "plugin 'echo' does not support framing 'netstrng'",
            "raw, line, netstring, u16, u32",
            "did you mean 'netstring'?",
        ],
        id="framing-unknown-did-you-mean",
    ),
    pytest.param(
        service(framing='"u16"', max_frame="70000"),
        "services[0].max_frame",
        ["70000 is more than u16 framing can carry (65535)"],
        id="max-frame-over-u16",
    ),
    pytest.param(
        service(framing='"raw"', max_frame="100"),
        "services[0].max_frame",
        ["raw framing has no frames to limit", "remove max_frame"],
        id="max-frame-with-raw",
    ),
    pytest.param(
        service(max_frame="100"),
        "services[0].max_frame",
        ["raw framing has no frames to limit"],
        id="max-frame-with-default-raw",
    ),
    pytest.param(
        service(framing='"line"', max_frame="0"),
        "services[0].max_frame",
        ["0 is out of range", "expected 1 to 67108864"],
        id="max-frame-zero",
    ),
    # Range checks.
    pytest.param(
        service(max_connections="0"),
        "services[0].max_connections",
        ["0 is out of range", "expected 1 to 1000000"],
        id="max-connections-zero",
    ),
    pytest.param(
        service(idle_timeout="-1"),
        "services[0].idle_timeout",
        ["-1.0 is out of range", "expected 0 to 604800"],
        id="idle-timeout-negative",
    ),
    pytest.param(
        "[daemon]\nshutdown_timeout = 7200\n" + ECHO,
        "daemon.shutdown_timeout",
        ["7200.0 is out of range", "expected 0 to 3600"],
        id="shutdown-timeout-too-long",
    ),
    pytest.param(
        service(plugin="reverse", repeat="11"),
        "services[0].repeat",
        ["11 is out of range", "expected 1 to 10"],
        id="plugin-own-range-check",
    ),
    pytest.param(
        service(plugin="reverse", prefix="3"),
        "services[0].prefix",
        ["expected a string", "got integer 3"],
        id="plugin-key-wrong-type",
    ),
    # The file as a whole.
    pytest.param(
        service(enabled="false"),
        "services",
        ["no enabled service"],
        id="no-enabled-service",
    ),
    pytest.param(
        '[daemon]\nlog_format = "json"\n',
        "services",
        ["no enabled service", "add a [[services]] table"],
        id="no-services-at-all",
    ),
]


@pytest.mark.parametrize(("text", "path", "expected"), BAD_CONFIGS)
def test_badConfigIsRefused(text: str, path: str, expected: list[str]) -> None:
    """
    A config with one mistake is refused with exactly one problem that names the
    file, the key path, what was given and what was expected.
    """
    lines = problemLines(text)
    assert len(lines) == 1, lines
    (line,) = lines
    prefix = f"{SOURCE}: {path}: "
    assert line.startswith(prefix), line
    for fragment in expected:
        assert fragment in line[len(prefix) :], (fragment, line)


def test_duplicateNameNamesBothIndices() -> None:
    """
    A duplicate service name is reported at the later service and names the earlier one.
    """
    lines = problemLines(service(name="twin") + service(name="twin", listen='["tcp:1"]'))
    assert lines == [f"{SOURCE}: services[1].name: duplicate service name 'twin'; services[0] has it"]


def test_unknownPluginListsEveryKnownPlugin() -> None:
    """
    An unknown plugin's problem lists every plugin that loaded, sorted.
    """
    (line,) = problemLines(service(plugin="nosuchthing"))
    assert line == (
        f"{SOURCE}: services[0].plugin: unknown plugin 'nosuchthing'; known plugins: "
        + ", ".join(sorted(REGISTRY.plugins))
    )


def test_allProblemsReportedTogether() -> None:
    """
    Every problem in a file is reported at once, table by table in file order.
    """
    text = """
    bogus = 1

    [daemon]
    shutdown_timout = 5
    log_format = "jsn"

    [[services]]
    name = "one"
    plugin = "echo"
    listen = ["tcpp:80", "udp:65536"]
    max_connections = 0
    max_conections = 5

    [[services]]
    name = "two"
    plugin = "ecko"
    listen = ["tcp:0"]

    [[services]]
    name = "one"
    plugin = "reverse"
    listen = ["tcp:0", "udp:0"]
    framing = "raw"
    repeat = 11
    """
    with pytest.raises(ConfigError) as info:
        parse(text)
    paths = [renderPath(p.path) for p in info.value.problems]
    assert paths[:8] == [
        "bogus",
        "daemon.shutdown_timout",
        "daemon.log_format",
        "services[0].listen[0]",
        "services[0].listen[1]",
        "services[0].max_connections",
        "services[0].max_conections",
        "services[1].plugin",
    ]
    # Cross-key checks (transport, framing, duplicate name) follow the keys they relate.
    assert sorted(paths[8:]) == [
        "services[2].framing",
        "services[2].listen[1]",
        "services[2].name",
        "services[2].repeat",
    ]
    rendered = str(info.value).splitlines()
    assert len(rendered) == len(paths) == 12
    assert all(line.startswith(f"{SOURCE}: ") for line in rendered)
    assert f"{SOURCE}: services[2].name: duplicate service name 'one'; services[0] has it" in rendered


def test_pluginKeysCheckedEvenWhenEnvelopeIsBad() -> None:
    """
    The plugin's own keys are checked even when the service's envelope has problems of its own.
    """
    lines = problemLines(service(plugin="reverse", max_connections="0", repeat="0"))
    assert [line.split(": ")[1] for line in lines] == ["services[0].max_connections", "services[0].repeat"]


@pytest.mark.parametrize(
    ("contents", "expected"),
    [
        pytest.param(b"[daemon\n", ["not valid TOML", "line 1"], id="toml-syntax-error"),
        pytest.param(b'[[services]]\nname = "x"\nname = "y"\n', ["not valid TOML", "line 3"], id="toml-duplicate-key"),
        pytest.param(b"\xff\xfe[daemon]\n", ["cannot read the file", "utf-8"], id="not-utf-8"),
    ],
)
def test_unparseableFile(tmp_path: Path, contents: bytes, expected: list[str]) -> None:
    """
    A file that is not UTF-8 TOML is refused with one problem naming the file and why.
    """
    path = tmp_path / "netd.toml"
    path.write_bytes(contents)
    with pytest.raises(ConfigError) as info:
        loadConfig(str(path), REGISTRY)
    (line,) = str(info.value).splitlines()
    assert line.startswith(f"{path}: "), line
    for fragment in expected:
        assert fragment in line, (fragment, line)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("missing.toml", "No such file or directory", id="missing-file"),
        pytest.param(".", "Is a directory", id="directory"),
    ],
)
def test_unreadableFile(tmp_path: Path, name: str, expected: str) -> None:
    """
    A config path that cannot be read is refused with a problem naming the path and the OS error.
    """
    path = tmp_path / name
    with pytest.raises(ConfigError) as info:
        loadConfig(str(path), REGISTRY)
    assert info.value.source == str(path)
    (line,) = str(info.value).splitlines()
    assert line.startswith(f"{path}: cannot read the file: "), line
    assert expected in line


def test_loadConfigNamesTheFile(tmp_path: Path) -> None:
    """
    Problems found in a file loaded from disk are prefixed with that file's path.
    """
    path = tmp_path / "bad.toml"
    path.write_text(service(plugin="reverse", prefx='"x"'), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        loadConfig(str(path), REGISTRY)
    assert str(info.value) == f"{path}: services[0].prefx: unknown key; did you mean 'prefix'?"


def test_embeddedDefaultIsValid() -> None:
    """
    Without a path, loadConfig reads the embedded default, which is valid and enabled.
    """
    config = loadConfig(None, REGISTRY)
    assert config.source == DEFAULT_CONFIG_NAME
    assert any(s.enabled for s in config.services)


def test_adminOffUnlessConfigured() -> None:
    """
    Without an admin key there is no control API (so two netds on different service ports start side by side), and check shows admin = false.
    """
    config = parse(ECHO)
    assert config.daemon.admin.address is None
    assert DaemonSpec().admin.address is None
    assert config.toConfig()["daemon"]["admin"] is False


def test_noServicesWithAControlAPI() -> None:
    """
    A config with a control API and no service is valid: its services come at runtime through POST /services.
    """
    config = parse('[daemon]\nadmin = "tcp:0:interface=127.0.0.1"\n')
    assert config.services == ()
    assert config.daemon.admin.address is not None


def test_embeddedDefaultPlacesAdmin() -> None:
    """
    The embedded default config (netd run without -c, config/netd.toml) sets the control API on 127.0.0.1:8053 itself, as the quick start's curl lines expect.
    """
    config = loadConfig(None, REGISTRY)
    assert config.toConfig()["daemon"]["admin"] == "tcp:8053:interface=127.0.0.1"
    assert config.daemon.admin.localOnly


@pytest.mark.parametrize(
    ("plugin", "extra", "framing", "maxFrame"),
    [
        pytest.param("echo", {}, "raw", None, id="echo-default-raw"),
        pytest.param("echo", {"framing": '"line"'}, "line", 65536, id="line-default-limit"),
        pytest.param("echo", {"framing": '"netstring"'}, "netstring", 65536, id="netstring-default-limit"),
        pytest.param("echo", {"framing": '"u16"'}, "u16", 65535, id="u16-default-limit-capped"),
        pytest.param("echo", {"framing": '"u32"'}, "u32", 65536, id="u32-default-limit"),
        pytest.param("echo", {"framing": '"u16"', "max_frame": "65535"}, "u16", 65535, id="u16-largest-allowed"),
        pytest.param("echo", {"framing": '"line"', "max_frame": "100"}, "line", 100, id="explicit-limit"),
        pytest.param("reverse", {}, "line", 65536, id="plugin-default-framing"),
    ],
)
def test_framingDefaults(plugin: str, extra: dict[str, str], framing: str, maxFrame: int | None) -> None:
    """
    A service's framing defaults to its plugin's first, and max_frame to 65536 or the framing's largest.
    """
    (spec,) = parse(service(plugin=plugin, **extra)).services
    assert (spec.framing, spec.max_frame) == (framing, maxFrame)


def test_defaultsFilledIn() -> None:
    """
    A minimal config gets every default: daemon settings, limits, timeouts and plugin options.
    """
    config = parse(service(name="r", plugin="reverse"))
    assert config.source == SOURCE
    assert config.daemon == DaemonSpec(log_format="text", log_level="info", shutdown_timeout=10.0)
    assert config.toConfig() == {
        "daemon": {
            "log_format": "text",
            "log_level": "info",
            "shutdown_timeout": 10.0,
            "lameduck": 0.0,
            "admin": False,
            "toxiproxy": False,
            "admin_hosts": [],
            "admin_max_connections": 64,
            "watch_config": False,
            "watch_interval": 5.0,
        },
        "services": [
            {
                "name": "r",
                "plugin": "reverse",
                "listen": ["tcp:0"],
                "enabled": True,
                "idle_timeout": 300.0,
                "min_idle_timeout": 10.0,
                "evict_idle": True,
                "framing": "line",
                "max_frame": 65536,
                "proxy_trusted": ["127.0.0.0/8", "::1/128", "unix:"],
                "events": 1000,
                "faults": [],
                "prefix": "",
                "repeat": 1,
            }
        ],
    }
    (spec,) = config.services
    assert spec.plugin is REGISTRY.get("reverse")
    assert isinstance(spec.idle_timeout, float)


def test_integersAcceptedForSeconds() -> None:
    """
    Whole numbers are accepted where seconds are expected and become floats.
    """
    config = parse("[daemon]\nshutdown_timeout = 3\n" + service(idle_timeout="0"))
    assert config.daemon.shutdown_timeout == 3.0
    assert isinstance(config.daemon.shutdown_timeout, float)
    assert config.services[0].idle_timeout == 0.0


ROUND_TRIP = [
    pytest.param(ECHO, id="minimal-echo"),
    pytest.param(
        """
        [daemon]
        log_format = "json"
        log_level = "debug"
        shutdown_timeout = 2.5

        [[services]]
        name = "echo"
        plugin = "echo"
        listen = ["tcp:7007:interface=127.0.0.1", "udp:7007:interface=127.0.0.1", "unix:/tmp/netd-echo.sock"]
        framing = "u16"
        max_frame = 512
        max_connections = 10
        idle_timeout = 5

        [[services]]
        name = "rev"
        plugin = "reverse"
        listen = ["tcp6:0:interface=\\\\:\\\\:1"]
        prefix = "> "
        repeat = 3

        [[services]]
        name = "off"
        plugin = "echo"
        listen = ["udp:0"]
        enabled = false
        """,
        id="everything-set",
    ),
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_toConfigRoundTrips(text: str) -> None:
    """
    The normalized config, dumped as TOML and parsed again, is the same config.
    """
    config = parse(text)
    dumped = tomli_w.dumps(config.toConfig())
    again = parseConfig(tomllib.loads(dumped), SOURCE, REGISTRY)
    assert again == config
    assert again.toConfig() == config.toConfig()


@pytest.mark.parametrize(
    "listen",
    [
        pytest.param("tcp:0", id="tcp"),
        pytest.param("tcp:port=0:interface=127.0.0.1", id="tcp-keywords"),
        pytest.param("tcp6:0:interface=\\:\\:1", id="tcp6-escaped-ipv6"),
        pytest.param("udp:0:interface=\\:\\:1", id="udp-escaped-ipv6"),
        pytest.param("udp:0:interface=::1", id="udp-unescaped-ipv6"),
        pytest.param("udp:0:interface=127.0.0.1", id="udp-ipv4"),
        pytest.param("unix:/tmp/netd-test.sock", id="unix"),
        pytest.param("systemd:domain=INET:index=0", id="systemd-socket-activation"),
    ],
)
def test_validListenForms(listen: str) -> None:
    """
    Each documented listen form is accepted and kept as written.
    """
    (spec,) = parse(service(listen=json.dumps([listen]))).services
    assert [a.text for a in spec.listen] == [listen]


def test_udpInterfaceParsed() -> None:
    """
    A udp: listen string's port and interface are parsed, IPv6 escapes removed.
    """
    (spec,) = parse(service(listen='["udp:5353:interface=\\\\:\\\\:1", "udp:0"]')).services
    assert [(a.transport, a.port, a.interface) for a in spec.listen] == [
        ("datagram", 5353, "::1"),
        ("datagram", 0, ""),
    ]


@attrs.frozen
class PingOptions:
    """
    A datagram-only test plugin's keys: none.
    """


@implementer(IProtocolPlugin)
class PingPlugin:
    """
    A datagram-only plugin, to show that stream-only keys are refused for it.
    """

    name = "ping"
    summary = "test plugin serving datagrams only"
    optionsType = PingOptions
    transports = frozenset({"datagram"})
    framings: tuple[str, ...] = ()
    requiresTLS = False

    def build(self, options: Any, context: Any) -> Any:
        """
        Never called by these tests.
        """
        raise NotImplementedError()


PING_REGISTRY = PluginRegistry({"ping": LoadedPlugin(PingPlugin(), "test")}, {})


@pytest.mark.parametrize(
    ("extra", "path", "expected"),
    [
        pytest.param(
            {"listen": '["tcp:0"]'},
            "services[0].listen[0]",
            "plugin 'ping' does not serve streams; it serves datagram ('tcp:0')",
            id="stream-address",
        ),
        pytest.param(
            {"framing": '"line"'},
            "services[0].framing",
            "plugin 'ping' serves no streams, so it takes no framing",
            id="framing",
        ),
        pytest.param(
            {"max_frame": "10"},
            "services[0].max_frame",
            "plugin 'ping' serves no streams, so it takes no max_frame",
            id="max-frame",
        ),
    ],
)
def test_datagramOnlyPluginRefusesStreamKeys(extra: dict[str, str], path: str, expected: str) -> None:
    """
    A plugin that serves only datagrams refuses stream listen strings, framing and max_frame.
    """
    keys = {"listen": '["udp:0"]', **extra}
    lines = problemLines(service(plugin="ping", **keys), PING_REGISTRY)
    assert lines == [f"{SOURCE}: {path}: {expected}"]


def test_datagramOnlyPluginHasNoFraming() -> None:
    """
    A datagram-only service has no framing or max_frame, and its normalized form omits both.
    """
    config = parse(service(plugin="ping", listen='["udp:0"]'), PING_REGISTRY)
    (spec,) = config.services
    assert (spec.framing, spec.max_frame) == (None, None)
    table = config.toConfig()["services"][0]
    assert "framing" not in table and "max_frame" not in table
    assert parseConfig(tomllib.loads(tomli_w.dumps(config.toConfig())), SOURCE, PING_REGISTRY) == config


# The tls table.


def tlsService(tls: str, listen: str = '["tcp:0"]', plugin: str = "echo") -> str:
    """
    A service with C{tls} (TOML, written as in the file) as its tls table.
    """
    return service(listen=listen, plugin=plugin, tls=tls)


KEYS = 'certificate = "c.pem", private_key = "k.pem"'

BAD_TLS = [
    pytest.param(
        tlsService('{ certificate = "c.pem" }'),
        "services[0].tls.private_key",
        ['missing; required unless certificate = "auto"'],
        id="private-key-missing",
    ),
    pytest.param(
        tlsService('{ certificate = "auto", private_key = "k.pem" }'),
        "services[0].tls.private_key",
        ['certificate = "auto" makes its own key; remove private_key'],
        id="auto-with-private-key",
    ),
    pytest.param(
        tlsService('{ certificate = "c.pem", private_ky = "k.pem" }'),
        "services[0].tls.private_ky",
        ["unknown key", "did you mean 'private_key'?"],
        id="unknown-key-did-you-mean",
    ),
    pytest.param(
        tlsService(f'{{ {KEYS}, min_version = "1.4" }}'),
        "services[0].tls.min_version",
        ['expected a TLS version: "1.0", "1.1", "1.2" or "1.3"', "got string '1.4'"],
        id="unknown-version",
    ),
    pytest.param(
        tlsService(f'{{ {KEYS}, min_version = "1.3", max_version = 1.2 }}'),
        "services[0].tls.max_version",
        ["1.2 is older than min_version (1.3)"],
        id="max-older-than-min",
    ),
    pytest.param(
        tlsService(f'{{ {KEYS}, ciphers = "NO-SUCH-CIPHER" }}'),
        "services[0].tls.ciphers",
        ["'NO-SUCH-CIPHER' is not an OpenSSL cipher string"],
        id="bad-cipher-string",
    ),
    pytest.param(
        tlsService(f'{{ {KEYS}, alpn = [""] }}'),
        "services[0].tls.alpn",
        ["[0] '' is not an ALPN protocol name"],
        id="empty-alpn-name",
    ),
    pytest.param(
        tlsService(f'{{ {KEYS}, client_auth = "requird", client_ca = "ca.pem" }}'),
        "services[0].tls.client_auth",
        ["expected one of 'none', 'optional', 'required'", "did you mean 'required'?"],
        id="client-auth-typo",
    ),
    pytest.param(
        tlsService(f'{{ {KEYS}, client_auth = "required" }}'),
        "services[0].tls.client_ca",
        ['missing; client_auth = "required" needs the CAs client certificates must chain to'],
        id="client-ca-missing",
    ),
    pytest.param(
        tlsService(f'{{ {KEYS}, client_ca = "ca.pem" }}'),
        "services[0].tls.client_ca",
        ['client_auth is "none", so no client certificate is asked for'],
        id="client-ca-without-client-auth",
    ),
    pytest.param(
        tlsService(f'{{ {KEYS}, client_ca = "ca.pem", client_auth = "optional", client_allow = ["cn:x"] }}'),
        "services[0].tls.client_allow",
        ['needs client_auth = "required", not "optional"'],
        id="client-allow-needs-required",
    ),
    pytest.param(
        tlsService(f'{{ {KEYS}, sni = {{ "not a name" = {{ certificate = "a.pem", private_key = "a-key.pem" }} }} }}'),
        "services[0].tls.sni",
        ["'not a name' is not a DNS name"],
        id="sni-bad-name",
    ),
    pytest.param(
        tlsService(f'{{ {KEYS}, sni = {{ alpha = {{ certificate = "a.pem" }} }} }}'),
        "services[0].tls.sni.alpha.private_key",
        ["missing required key", "expected a path"],
        id="sni-entry-without-key",
    ),
    pytest.param(
        tlsService(f'{{ {KEYS}, sni = {{ alpha = {{ certificate = "auto", private_key = "k.pem" }} }} }}'),
        "services[0].tls.sni",
        ['"auto" is only for the default certificate'],
        id="sni-auto",
    ),
    pytest.param(
        tlsService(f"{{ {KEYS}, handshake_timeout = -1 }}"),
        "services[0].tls.handshake_timeout",
        ["-1.0 is out of range", "expected 0 to 3600"],
        id="handshake-timeout-negative",
    ),
    pytest.param(
        tlsService('"auto"'),
        "services[0].tls",
        ["expected a table, got string 'auto'"],
        id="not-a-table",
    ),
    pytest.param(
        tlsService('{ certificate = "auto" }', listen='["udp:0"]'),
        "services[0].tls",
        ["TLS applies to stream listeners", "listens only on udp: addresses"],
        id="udp-only-service",
    ),
    pytest.param(
        '[daemon]\nstate_dir = " "\n' + ECHO,
        "daemon.state_dir",
        ["expected a path, got an empty string"],
        id="empty-state-dir",
    ),
]


@pytest.mark.parametrize(("text", "path", "expected"), BAD_TLS)
def test_badTLSTableIsRefused(text: str, path: str, expected: list[str]) -> None:
    """
    A tls table with one mistake is refused with exactly one problem naming the file, the key path inside the table and what is expected.
    """
    test_badConfigIsRefused(text, path, expected)


def test_tlsTableForms() -> None:
    """
    The tls table is accepted inline and as a [services.tls] sub-table, with versions as strings or numbers, and on a service with TCP and UDP listeners.
    """
    inline = parse(tlsService('{ certificate = "auto", min_version = 1.3 }', listen='["tcp:0", "udp:0"]'))
    (spec,) = inline.services
    assert spec.tls is not None
    assert (spec.tls.certificate, spec.tls.min_version.name, spec.tls.private_key) == ("auto", "1.3", None)
    table = parse(
        """
        [[services]]
        name = "secure"
        plugin = "echo"
        listen = ["tcp:0"]

        [services.tls]
        certificate = "c.pem"
        private_key = "k.pem"
        client_ca = "ca.pem"
        client_auth = "required"
        client_allow = ["cn:netd client"]

        [services.tls.sni]
        "alpha.test" = { certificate = "a.pem", private_key = "a-key.pem" }
        "*.wild.test" = { certificate = "w.pem", private_key = "w-key.pem" }
        """
    )
    (spec,) = table.services
    assert spec.tls is not None
    assert sorted(spec.tls.sni or {}) == ["*.wild.test", "alpha.test"]
    assert spec.tls.client_allow == ("cn:netd client",)
    assert parse(ECHO).services[0].tls is None


def test_tlsRoundTrips() -> None:
    """
    A service's tls table survives normalization: dumped with its defaults and parsed again, it is the same.
    """
    config = parse(
        tlsService(
            f'{{ {KEYS}, max_version = "1.3", alpn = ["echo"], sni = {{ "a.test" = {{ certificate = "a.pem", private_key = "ak.pem" }} }} }}'
        )
    )
    normalized = config.toConfig()
    tls = normalized["services"][0]["tls"]
    assert (
        tls["profile"] == "intermediate"
        and "min_version" not in tls
        and tls["max_version"] == "1.3"
        and tls["handshake_timeout"] == 10.0
    )
    again = parseConfig(tomllib.loads(tomli_w.dumps(normalized)), SOURCE, REGISTRY)
    assert again == config


@attrs.frozen
class SecureOptions:
    """
    A TLS-only test plugin's keys: none.
    """


@implementer(IProtocolPlugin)
class SecurePlugin:
    """
    A stream plugin that declares requiresTLS.
    """

    name = "secure"
    summary = "test plugin that serves only over TLS"
    optionsType = SecureOptions
    transports = frozenset({"stream"})
    framings = ("raw",)
    requiresTLS = True

    def build(self, options: Any, context: Any) -> Any:
        """
        Never called by these tests.
        """
        raise NotImplementedError()


def test_pluginRequiringTLS() -> None:
    """
    A plugin that declares requiresTLS refuses a service without a tls table, naming the plugin and how to add one; with one it is accepted.
    """
    registry = PluginRegistry({"secure": LoadedPlugin(SecurePlugin(), "test")}, {})
    (line,) = problemLines(service(plugin="secure"), registry)
    assert line.startswith(f"{SOURCE}: services[0].tls: missing; plugin 'secure' serves only over TLS: add a tls table")
    assert 'tls = { certificate = "auto" }' in line
    (spec,) = parse(service(plugin="secure", tls='{ certificate = "auto" }'), registry).services
    assert spec.tls is not None


def test_stateDirDefaultUnset() -> None:
    """
    state_dir is unset by default (netd picks the systemd, XDG or home folder at run time) and kept as written when set.
    """
    assert parse(ECHO).daemon.state_dir is None
    assert parse('[daemon]\nstate_dir = "/var/lib/netd"\n' + ECHO).daemon.state_dir == "/var/lib/netd"


RELATIVE_CONFIG = """\
[daemon]
state_dir = "state"
admin = "unix:run/admin.sock"
admin_token_file = "secrets/admin.token"

[[services]]
name = "tls"
plugin = "echo"
listen = ["tcp:0", "unix:run/echo.sock:mode=600", "unix:address=../shared/echo.sock", "haproxy:unix:run/proxied.sock"]
tls = { certificate = "certs/server.pem", private_key = "./certs/server-key.pem", client_ca = "certs/ca.pem", client_auth = "required", sni = { "a.test" = { certificate = "certs/a.pem", private_key = "certs/a-key.pem" } } }

[[services]]
name = "dns"
plugin = "dns-proxy"
listen = ["udp:0", "unix:/run/absolute.sock"]
ca_bundle = "certs/ca.pem"
"""


def test_relativePathsAreFromTheConfigFile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Every relative path of a config file (TLS files, the token file, state_dir, unix: socket paths of services and admin, a plugin's path option) is placed in the file's folder, whatever the working directory; absolute ones stay.
    """
    folder = tmp_path / "etc" / "netd"
    (folder / "certs").mkdir(parents=True)
    (folder / "certs" / "ca.pem").write_text("")
    (folder / "netd.toml").write_text(RELATIVE_CONFIG)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = loadConfig(str(Path("..") / "etc" / "netd" / "netd.toml"), REGISTRY)
    daemon = config.daemon
    assert (daemon.state_dir, daemon.admin_token_file) == (f"{folder}/state", f"{folder}/secrets/admin.token")
    assert daemon.admin.address is not None and daemon.admin.address.text == f"unix:{folder}/run/admin.sock"
    tls, dns = config.services
    assert [a.text for a in tls.listen] == [
        "tcp:0",
        f"unix:{folder}/run/echo.sock:mode=600",
        f"unix:address={tmp_path}/etc/shared/echo.sock",
        f"haproxy:unix:{folder}/run/proxied.sock",
    ]
    assert tls.tls is not None and tls.tls.sni is not None
    assert (tls.tls.certificate, tls.tls.private_key, tls.tls.client_ca) == (
        f"{folder}/certs/server.pem",
        f"{folder}/certs/server-key.pem",
        f"{folder}/certs/ca.pem",
    )
    assert (tls.tls.sni["a.test"].certificate, tls.tls.sni["a.test"].private_key) == (
        f"{folder}/certs/a.pem",
        f"{folder}/certs/a-key.pem",
    )
    assert dns.options.ca_bundle == f"{folder}/certs/ca.pem"
    assert [a.text for a in dns.listen] == ["udp:0", "unix:/run/absolute.sock"]


def test_relativePluginPathCheckedWhereItIs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A plugin's check of a path option (dns-proxy's ca_bundle must be readable) looks in the config file's folder, not the working directory.
    """
    (tmp_path / "netd.toml").write_text(service(listen='["udp:0"]', plugin="dns-proxy", ca_bundle='"ca.pem"'))
    monkeypatch.chdir("/")
    with pytest.raises(ConfigError) as info:
        loadConfig(str(tmp_path / "netd.toml"), REGISTRY)
    assert str(info.value) == f"{tmp_path}/netd.toml: services[0].ca_bundle: '{tmp_path}/ca.pem' is not a readable file"
    (tmp_path / "ca.pem").write_text("")
    assert loadConfig(str(tmp_path / "netd.toml"), REGISTRY).services[0].options.ca_bundle == f"{tmp_path}/ca.pem"


def test_unixPathEscapedForTwisted(tmp_path: Path) -> None:
    """
    A config folder whose name holds a colon or an equals sign gives unix: paths escaped as Twisted's endpoint grammar needs, which Twisted parses back to the real path.
    """
    from twisted.internet.endpoints import serverFromString

    folder = tmp_path / "odd:na=me"
    folder.mkdir()
    (folder / "netd.toml").write_text(service(listen='["unix:echo\\\\:1.sock:lockfile=1"]'))
    (address,) = loadConfig(str(folder / "netd.toml"), REGISTRY).services[0].listen
    endpoint = serverFromString(None, address.text)
    assert endpoint._address == f"{folder}/echo:1.sock"


def test_autoIsNotAPath(tmp_path: Path) -> None:
    """
    certificate = "auto" stays the word auto (a file named auto is written "./auto"), and "auto" under sni is still refused as such.
    """
    (tmp_path / "netd.toml").write_text(service(tls='{ certificate = "auto" }'))
    spec = loadConfig(str(tmp_path / "netd.toml"), REGISTRY).services[0]
    assert spec.tls is not None and spec.tls.certificate == "auto"
    (tmp_path / "netd.toml").write_text(service(tls='{ certificate = "./auto", private_key = "k.pem" }'))
    spec = loadConfig(str(tmp_path / "netd.toml"), REGISTRY).services[0]
    assert spec.tls is not None and spec.tls.certificate == f"{tmp_path}/auto"
    (tmp_path / "netd.toml").write_text(
        service(tls='{ certificate = "auto", sni = { "a.test" = { certificate = "auto", private_key = "k.pem" } } }')
    )
    with pytest.raises(ConfigError, match="'a.test': \"auto\" is only for the default certificate"):
        loadConfig(str(tmp_path / "netd.toml"), REGISTRY)


def test_embeddedDefaultHasNoRelativePath() -> None:
    """
    The embedded default names no file (its TLS is certificate = "auto" in the state directory), so it means the same from every working directory.
    """
    config = loadConfig(None, REGISTRY)
    assert config.daemon.state_dir is None and config.daemon.admin_token_file is None
    assert all(s.tls is None or s.tls.certificate == "auto" for s in config.services)
    assert not any(a.text.startswith(("unix:", "haproxy:unix:")) for s in config.services for a in s.listen)
