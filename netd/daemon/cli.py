"""
The command line: C{netd run | check | health | plugins | schema | certs}.

Only L{main} touches the global reactor (through L{twisted.internet.task.react});
everything below it takes the reactor as an argument.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from typing import Any

import attrs
import tomli_w
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.logger import Logger

from netd import __version__
from netd.config.listen import listensOnUnixSocket, unixSocketPath
from netd.config.options import ConfigError, InvalidValue, KeyPath, Problem, describeSchema
from netd.config.schema import configSchema, registryPlugins, renderSchema
from netd.config.spec import AdminAddress, NetdConfig, loadConfig
from netd.daemon.application import NetdApplication
from netd.daemon.daemon import adminOverride, withDaemonOverrides
from netd.daemon.openapi import renderOpenAPI
from netd.daemon.privileges import PrivilegeDrop, PrivilegeError
from netd.daemon.probe import ProbeError, ProbeTarget, probe
from netd.daemon.systemd import Notifier
from netd.logs import startLogging
from netd.registry import PluginRegistry, discoverPlugins
from netd.tls.devcerts import DevelopmentSet, defaultStateDir, ensureDevelopmentSet, writeBadCertificates
from netd.tls.options import CABundlePath, ClientTLSOptions
from netd.words import counted

log = Logger(namespace="netd.daemon.cli")

EMBEDDED_DEFAULT = """\
Without -c, netd run serves its embedded default config, on 127.0.0.1 only:
  echo      plugin echo: whatever arrives is sent back, TCP and UDP on
            127.0.0.1:7007
  dns       plugin dns-proxy: a caching DNS proxy, TCP and UDP on 127.0.0.1:5300,
            forwarding to the nameservers of /etc/resolv.conf, with test records
            that answer without any network: netd.test (A 127.0.0.1, AAAA ::1,
            TXT "served by netd") and *.netd.test (A 127.0.0.1)
  tls-echo  plugin tls-echo: echo behind TLS, TCP on 127.0.0.1:7443, with
            certificate = "auto": a development CA and a certificate for
            localhost, 127.0.0.1 and ::1, made on the first start in
            ~/.local/state/netd/tls/ (or the tls/ folder of $STATE_DIRECTORY,
            $XDG_STATE_HOME/netd or [daemon] state_dir); the first start logs
            where the CA is, and netd certs prints it
  and the control API on 127.0.0.1:8053 (HTTP: /health, /ready, /services,
  /metrics, and POST /reload with the token netd keeps in admin.token in the
  same state directory).
netd check prints that config in full.
"""
"""
The embedded default config (netd/config/default.toml) as C{netd --help} and C{netd
run --help} describe it; a test checks it against the config.
"""

DESCRIPTION = f"""\
netd runs network protocol services (echo, a DNS proxy, a TLS echo, and
whatever plugins are installed) described in one TOML config file.

{EMBEDDED_DEFAULT}"""


def buildParser() -> argparse.ArgumentParser:
    """
    The argument parser of every subcommand.
    """
    parser = argparse.ArgumentParser(
        prog="netd", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-V", "--version", action="version", version=f"netd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    configHelp = "the TOML config file (default: the embedded default config)"

    run = commands.add_parser(
        "run",
        help="run the services of a config (without -c: the embedded default)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Run the services of a config until SIGTERM or SIGINT, which stop accepting, let
open connections finish for up to [daemon] shutdown_timeout seconds, and exit 0.
Exits 1 if the config is invalid or an address cannot be listened on; nothing
is left listening then.

"""
        + EMBEDDED_DEFAULT,
        epilog="""\
The environment variable NETD_REACTOR chooses the event loop: uvloop (the
default: TCP connections served by uvloop's C transports), netd (netd's epoll
reactor, no uvloop) or twisted (Twisted's default reactor, to rule netd's own
code out).""",
    )
    run.add_argument("-c", "--config", metavar="FILE", help=configHelp)
    run.add_argument(
        "--ports-file",
        metavar="FILE",
        help="once every service listens, write the bound addresses (the ports picked for port 0 "
        'included) to FILE as JSON: {"services": {NAME: [{"listen", "transport", "host", "port"}]}, '
        '"admin": {...}} (admin: where the control API listens, when it does)',
    )
    run.add_argument(
        "--admin",
        metavar="LISTEN",
        help="where the control API listens, in place of the config's [daemon] admin (reloads keep it): "
        "one address for each of several netds run from one config, as the netd@.service template gives "
        "each instance (its name is the port: --admin tcp:%%i:interface=127.0.0.1)",
    )

    check = commands.add_parser(
        "check",
        help="validate a config and print it normalized",
        description="Validate a config. If it is valid, print it with every default filled in and exit 0; otherwise print every problem (file, key path, what is wrong) and exit 1.",
    )
    check.add_argument("-c", "--config", metavar="FILE", help=configHelp)

    health = commands.add_parser(
        "health",
        help="ask a running netd's control API whether it is alive (or ready)",
        description="GET /health (with --ready: /ready) from the control API at the config's [daemon] admin "
        "address, and exit 0 if it answers 200, else 1: a container's HEALTHCHECK without curl.",
    )
    health.add_argument("-c", "--config", metavar="FILE", help=configHelp)
    health.add_argument(
        "--admin",
        metavar="LISTEN",
        help="the control API's address, as netd run --admin was given it (in place of the config's)",
    )
    health.add_argument("--ready", action="store_true", help="ask /ready (serving every service) instead of /health")
    health.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="default: 5")

    commands.add_parser(
        "plugins",
        help="list the plugins found, with their options",
        description="List the plugins found (built-in and from the netd.plugins entry-point group), each with its transports, framings and options with their defaults.",
    )

    schema = commands.add_parser(
        "schema",
        help="print the JSON Schema of the config, for editors",
        description="Print the JSON Schema (draft 2020-12) of a config file, made from the options `netd check` "
        "uses: every key with its help, type, default and range, a service's keys by its plugin. Editors that read "
        "JSON Schema (taplo, Even Better TOML) complete and check a config that starts with a '#:schema PATH' line.",
    )
    schema.add_argument(
        "--built-in",
        action="store_true",
        dest="builtIn",
        help="only the plugins that ship with netd, as the docs' netd.schema.json (default: every plugin installed)",
    )
    schema.add_argument(
        "--api",
        action="store_true",
        help="print the control API's OpenAPI 3.1 description instead (as GET /openapi.json answers it)",
    )

    certs = commands.add_parser(
        "certs",
        help="make development TLS certificates (and deliberately bad ones)",
        description="Make a development CA, a server certificate for localhost, 127.0.0.1 and ::1, and a client "
        "certificate for mutual TLS, signed by the CA; files that exist and are still good are reused. "
        'Prints where the CA is and how clients trust it. The default folder is the one certificate = "auto" uses.',
    )
    certs.add_argument(
        "--out",
        metavar="DIR",
        help="where to write them (default: the tls/ folder of the state directory: [daemon] state_dir of -c FILE, "
        "else $STATE_DIRECTORY, $XDG_STATE_HOME/netd or ~/.local/state/netd)",
    )
    certs.add_argument(
        "-c", "--config", metavar="FILE", help="take the state directory from this config's [daemon] state_dir"
    )
    certs.add_argument(
        "--bad",
        action="store_true",
        help="also write, into DIR/bad/, server certificates that correct clients must refuse: expired, not-yet-valid, "
        "wrong-host, self-signed and unknown-ca",
    )
    certs.add_argument(
        "--key-type", choices=("ecdsa", "rsa"), default="ecdsa", help="ECDSA P-256 (default) or RSA 2048 keys"
    )
    return parser


def _load(path: str | None, registry: PluginRegistry) -> NetdConfig | None:
    """
    Load a config, printing every problem to stderr if it is invalid.
    """
    try:
        return loadConfig(path, registry)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        print(f"{counted(len(e.problems), 'problem')} found; nothing was started.", file=sys.stderr)
        return None


def checkCommand(args: argparse.Namespace) -> int:
    """
    C{netd check}: validate the config, check what C{netd run} checks when
    it starts (L{startProblems}), and print the normalized config.
    """
    config = _load(args.config, discoverPlugins())
    if config is None:
        return 1
    problems = startProblems(config)
    if problems:
        for problem in problems:
            print(problem.render(config.source), file=sys.stderr)
        print(f"{counted(len(problems), 'problem')} found; nothing was started.", file=sys.stderr)
        return 1
    sys.stdout.write(f"# {config.source}: valid\n")
    sys.stdout.write(tomli_w.dumps(config.toConfig()))
    return 0


def startProblems(config: NetdConfig) -> list[Problem]:
    """
    Everything but the network that would make C{netd run} refuse a valid config,
    found without changing anything, as this user (so run check as the user that
    runs netd): the C{[daemon] user} switch and the state directory
    (L{PrivilegeDrop.check}), the control API's token (L{_adminProblems}), the
    TLS files (L{_tlsProblems}, L{_clientTLSProblems}), and the folders of C{unix:} sockets.  Binding
    is left to C{run}.

    @return: the problems, each at its key path.
    """
    daemon = config.daemon
    stateDir = daemon.state_dir or defaultStateDir()
    problems: list[Problem] = []
    try:
        PrivilegeDrop.check(daemon.user, daemon.group, daemon.state_dir)
    except PrivilegeError as e:
        problems.append(Problem(e.key, str(e)))
    sockets: list[tuple[KeyPath, str]] = []
    if daemon.admin.address is not None:
        sockets.append((("daemon", "admin"), daemon.admin.address.text))
        problems.extend(_adminProblems(config, stateDir))
    for i, spec in enumerate(config.services):
        if spec.enabled:
            sockets.extend((("services", i, "listen", j), address.text) for j, address in enumerate(spec.listen))
    problems.extend(_tlsProblems(config, stateDir))
    problems.extend(_clientTLSProblems(config))
    for key, text in sockets:
        path = unixSocketPath(text)
        why = None if path is None else _cannotWrite(os.path.dirname(os.path.abspath(path)), make=False)
        if why is not None:
            problems.append(Problem(key, f"cannot make the socket {path!r}: {why}"))
    return problems


def _adminProblems(config: NetdConfig, stateDir: str) -> list[Problem]:
    """
    What the control API's start would refuse: C{admin_token_file}, read
    by run's own L{netd.daemon.api.tokens.readToken} (mode, size, content); without one,
    on TCP, a state directory where netd cannot write the token it makes.
    """
    from netd.daemon.api.tokens import GENERATED_TOKEN_FILE, TokenFileError, readToken

    daemon = config.daemon
    assert daemon.admin.address is not None
    if isinstance(daemon.admin_token_file, str):
        try:
            readToken(daemon.admin_token_file)
        except TokenFileError as e:
            return [Problem(("daemon", "admin_token_file"), str(e))]
        return []
    if daemon.admin_token_file is False or listensOnUnixSocket(daemon.admin.address.text):
        return []
    generated = os.path.join(stateDir, GENERATED_TOKEN_FILE)
    try:
        readToken(generated)
        return []
    except TokenFileError:
        why = _cannotWrite(stateDir)
    if why is None:
        return []
    return [
        Problem(
            ("daemon", "admin_token_file"),
            f"unset, so netd makes a token in {generated!r}, but {why}; set [daemon] state_dir to a folder this "
            "user may write, admin_token_file to a file holding a secret, or admin_token_file = false",
        )
    ]


def _tlsProblems(config: NetdConfig, stateDir: str) -> list[Problem]:
    """
    What loading the C{tls} tables of the enabled services would refuse: the
    files, opened and checked as at start (an expired certificate is a
    warning, as at start); for C{certificate = "auto"}, a set that is not
    there yet and a state directory where it cannot be made.
    """
    from twisted.logger import ILogObserver, LogLevel, formatEvent
    from zope.interface import provider

    from netd.tls.contexts import ServerTLS
    from netd.tls.keys import TLSSetupError, loadKeyPair
    from netd.tls.options import AUTO

    @provider(ILogObserver)
    def warn(event: dict[str, Any]) -> None:
        if event.get("log_level") in (LogLevel.warn, LogLevel.error):
            print(f"{config.source}: warning: {formatEvent(event)}", file=sys.stderr)

    problems = []
    for i, spec in enumerate(config.services):
        if not spec.enabled or spec.tls is None:
            continue
        if spec.tls.certificate != AUTO:
            try:
                ServerTLS(spec.tls, serviceName=spec.name, log=Logger(namespace="netd.daemon.cli", observer=warn))
            except TLSSetupError as e:
                problems.append(Problem(("services", i) + e.key, str(e)))
            continue
        folder = os.path.join(stateDir, "tls")
        try:
            loadKeyPair(os.path.join(folder, "server.pem"), os.path.join(folder, "server-key.pem"), "tls")
            continue
        except TLSSetupError:
            why = _cannotWrite(folder)
        if why is not None:
            problems.append(
                Problem(
                    ("services", i, "tls", "certificate"),
                    f'"auto" makes the development certificate in {folder!r}, but {why}; '
                    "set [daemon] state_dir to a writable folder",
                )
            )
    return problems


CHECKED_SERVER_NAME = "localhost"
"""
The server name a client TLS table is checked with when it names none: it
plays no part in reading the files, and the config's own check already
refuses a table whose upstream names no host to verify.
"""


def _clientTLSProblems(config: NetdConfig) -> list[Problem]:
    """
    What the client TLS settings of the enabled services' plugins would
    refuse at start: the files of client TLS tables (the proxy's
    C{upstream_tls}), opened by the same L{netd.tls.client.clientCreatorFor},
    and CA bundles (dns-proxy's C{ca_bundle}), read as the start reads them.
    """
    from netd.tls.client import clientCreatorFor
    from netd.tls.keys import TLSSetupError, loadCertificates

    problems = []
    for i, spec in enumerate(config.services):
        if not spec.enabled:
            continue
        for key, value in _clientTLSValues(spec.options, ()):
            try:
                if isinstance(value, ClientTLSOptions):
                    clientCreatorFor(value, CHECKED_SERVER_NAME, key)
                else:
                    loadCertificates(value, "the CA bundle", key)
            except TLSSetupError as e:
                problems.append(Problem(("services", i) + e.key, str(e)))
    return problems


def _clientTLSValues(value: object, key: KeyPath) -> Iterator[tuple[KeyPath, ClientTLSOptions | CABundlePath]]:
    """
    Every L{ClientTLSOptions} table and L{CABundlePath} in a plugin's decoded
    options, with its key path within the service: at any depth of tables
    and arrays.
    """
    kind = type(value)
    if isinstance(value, ClientTLSOptions | CABundlePath):
        yield key, value
    elif attrs.has(kind):
        for field in attrs.fields(kind):
            yield from _clientTLSValues(getattr(value, field.name), (*key, field.name))
    elif isinstance(value, list | tuple):
        for j, item in enumerate(value):
            yield from _clientTLSValues(item, (*key, j))


def _cannotWrite(folder: str, make: bool = True) -> str | None:
    """
    Why this user could not write in C{folder} (or, with C{make}, make it
    in the nearest folder above it that exists), in words; L{None} when it can.
    """
    path = os.path.abspath(folder)
    while make and not os.path.lexists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        return f"{path!r} is not a folder" if os.path.lexists(path) else f"the folder {path!r} does not exist"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"this user (uid {os.geteuid()}) may not write in {path!r}"
    return None


def healthCommand(args: argparse.Namespace) -> int:
    """
    C{netd health}: ask the control API of the config's netd (L{netd.daemon.probe}).
    """
    path = "/ready" if args.ready else "/health"
    try:
        if args.admin is not None:
            address, source = AdminAddress.fromConfig(args.admin).address, "--admin"
        else:
            config = _load(args.config, discoverPlugins())
            if config is None:
                return 1
            address, source = config.daemon.admin.address, f"{config.source}'s [daemon] admin"
        if address is None:
            raise ProbeError(f"{source} is false: there is no control API to ask")
        target = ProbeTarget.fromListen(address.text)
        status, line = probe(target, path, args.timeout)
    except (InvalidValue, ProbeError, OSError) as e:
        print(f"netd health: {e}", file=sys.stderr)
        return 1
    print(f"{target.describe()}{path}: {status} {line}")
    return 0 if status == 200 else 1


def pluginsCommand(args: argparse.Namespace) -> int:
    """
    C{netd plugins}: list the plugins with their options and defaults.
    """
    registry = discoverPlugins()
    for name in sorted(registry.plugins):
        loaded = registry.plugins[name]
        plugin = loaded.plugin
        print(f"{name}: {plugin.summary}")
        print(f"  source: {loaded.source}")
        print(f"  transports: {', '.join(sorted(plugin.transports))}")
        if plugin.framings:
            print(f"  framings: {', '.join(plugin.framings)} (default {plugin.framings[0]})")
        rows = describeSchema(plugin.optionsType)
        if not rows:
            print("  options: none of its own")
        for key, typeName, default, help in rows:
            print(f"  {key} = {default}  ({typeName})")
            print(f"      {help}")
        print()
    for source, why in sorted(registry.broken.items()):
        print(f"could not load {source}: {why}", file=sys.stderr)
    return 0


def schemaCommand(args: argparse.Namespace) -> int:
    """
    C{netd schema}: print the config's JSON Schema, or with C{--api} the
    control API's OpenAPI description.
    """
    if args.api:
        sys.stdout.write(renderOpenAPI())
    else:
        sys.stdout.write(renderSchema(configSchema(registryPlugins(discoverPlugins(), builtInOnly=args.builtIn))))
    return 0


def certsCommand(args: argparse.Namespace) -> int:
    """
    C{netd certs}: make the development set (and the bad certificates), and
    say how to use them.
    """
    directory = args.out
    if directory is None:
        stateDir = None
        if args.config is not None:
            config = _load(args.config, discoverPlugins())
            if config is None:
                return 1
            stateDir = config.daemon.state_dir
        directory = os.path.join(stateDir or defaultStateDir(), "tls")
    directory = os.path.abspath(directory)
    try:
        files, made = ensureDevelopmentSet(directory, keyType=args.key_type)
        bad = writeBadCertificates(directory, keyType=args.key_type) if args.bad else []
    except OSError as e:
        print(f"netd certs: cannot write to {directory}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(describeDevelopmentSet(files, made))
    if bad:
        print()
        print(f"Bad server certificates in {os.path.join(directory, 'bad')}, each with its key (NAME-key.pem), for")
        print("clients that trust ca.pem and connect to localhost; a correct client must fail with:")
        for entry, certificatePath, _ in bad:
            print(f"  {certificatePath}")
            print(f"      {entry.defect}")
            print(f"      -> {entry.clientError}")
    return 0


def describeDevelopmentSet(files: DevelopmentSet, made: list[str]) -> str:
    """
    What C{netd certs} prints about a development set: where each file is and
    how to use it.
    """

    def state(*paths: str) -> str:
        return "made now" if any(p in made for p in paths) else "reused"

    return f"""\
Development CA:      {files.ca}  ({state(files.ca)})
Server certificate:  {files.server} + {files.serverKey}  ({state(files.server)})
                     for localhost, 127.0.0.1 and ::1
Client certificate:  {files.client} + {files.clientKey}  ({state(files.client)})
                     for mutual TLS (CN "netd client", DNS client.netd.test)

Serve it (or write certificate = "auto" to use the state directory's set):
  tls = {{ certificate = "{files.server}", private_key = "{files.serverKey}" }}

Clients trust the CA with:
  openssl s_client -connect localhost:PORT -CAfile {files.ca} -verify_return_error
  curl --cacert {files.ca} https://localhost:PORT/
  python: ssl.create_default_context(cafile="{files.ca}")
Mutual TLS: add -cert {files.client} -key {files.clientKey} (openssl), and on the
server client_ca = "{files.ca}" with client_auth = "required"."""


async def runApplication(reactor: Any, application: NetdApplication) -> None:
    """
    The runner of C{netd run}: the steps twistd takes with an application
    (L{NetdApplication.privilegedStartService}, then
    L{NetdApplication.startService}), taken once the reactor runs, then
    serve until a signal stops the reactor, whose shutdown waits for the
    application's drain.

    Nothing starts before the reactor runs: C{react} calls this first, and the
    reactor installs its SIGTERM/SIGINT handlers only when it starts, so a
    signal sent as soon as netd reports ready would otherwise kill it undrained.
    """
    application.catchReloadSignal()
    running: Deferred[None] = Deferred()
    reactor.callWhenRunning(running.callback, None)
    await running
    reactor.addSystemEventTrigger("before", "shutdown", application.stopService)
    application.privilegedStartService()
    application.startService()
    await application.whenServing()
    await Deferred()


def runCommand(args: argparse.Namespace) -> int:
    """
    C{netd run}: serve until a signal, on netd's reactor (L{netd.reactors.choice}) or
    the one C{NETD_REACTOR} names, installed before a plugin can import one.
    """
    from netd.reactors.choice import installReactor

    try:
        reactorName = installReactor()
    except ValueError as e:
        print(f"netd: {e}", file=sys.stderr)
        return 1
    config = _load(args.config, discoverPlugins())
    if config is None:
        return 1
    try:
        overrides = {} if args.admin is None else adminOverride(config, args.admin)
    except InvalidValue as e:
        for problem in str(e).splitlines():
            print(f"netd run --admin: {problem}", file=sys.stderr)
        return 1
    config = withDaemonOverrides(config, overrides)
    startLogging(config.daemon.log_format, config.daemon.log_level)
    log.info(
        "netd {version} starting with {source} (reactor: {reactor})",
        version=__version__,
        source=config.source,
        reactor=reactorName,
    )
    from twisted.internet import reactor

    application = NetdApplication(
        config,
        reactor,
        Notifier.fromEnvironment(),
        portsFile=args.ports_file,
        reloadOnHangup=True,
        daemonOverrides=overrides,
    )
    react(runApplication, (application,))
    return 0  # react exits the process; this is for type checkers


def main(argv: list[str] | None = None) -> int:
    """
    The C{netd} console script.
    """
    args = buildParser().parse_args(argv)
    commands = {
        "run": runCommand,
        "check": checkCommand,
        "health": healthCommand,
        "plugins": pluginsCommand,
        "schema": schemaCommand,
        "certs": certsCommand,
    }
    return commands[args.command](args)
