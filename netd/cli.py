"""
The command line: C{netd run | check | plugins}.

Only L{main} touches the global reactor (through L{twisted.internet.task.react});
everything below it takes the reactor as an argument.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import tomli_w
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.logger import Logger

from netd import __version__
from netd.config import NetdConfig, loadConfig
from netd.daemon import Daemon
from netd.logs import startLogging
from netd.options import ConfigError, describeSchema
from netd.plugin import PluginRegistry, discoverPlugins
from netd.service import ServiceStartError

log = Logger(namespace="netd")

DESCRIPTION = """\
netd runs network protocol services (echo, and whatever plugins are installed)
described in one TOML config file.  Without -c it uses its embedded default
config, which serves echo on 127.0.0.1.
"""


def buildParser() -> argparse.ArgumentParser:
    """
    The argument parser of every subcommand.
    """
    parser = argparse.ArgumentParser(prog="netd", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"netd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    configHelp = "the TOML config file (default: the embedded default config)"

    run = commands.add_parser("run", help="run the services of a config", description="Run the services of a config until SIGTERM or SIGINT, which stop accepting, let open connections finish for up to [daemon] shutdown_timeout seconds, and exit 0. Exits 1 if the config is invalid or an address cannot be listened on; nothing is left listening then.")
    run.add_argument("-c", "--config", metavar="FILE", help=configHelp)
    run.add_argument(
        "--ports-file",
        metavar="FILE",
        help="once every service listens, write the bound addresses (the ports picked for port 0 "
        'included) to FILE as JSON: {"services": {NAME: [{"listen", "transport", "host", "port"}]}}',
    )

    check = commands.add_parser(
        "check",
        help="validate a config and print it normalized",
        description="Validate a config. If it is valid, print it with every default filled in and exit 0; otherwise print every problem (file, key path, what is wrong) and exit 1.",
    )
    check.add_argument("-c", "--config", metavar="FILE", help=configHelp)

    commands.add_parser(
        "plugins",
        help="list the plugins found, with their options",
        description="List the plugins found (built-in and from the netd.plugins entry-point group), each with its transports, framings and options with their defaults.",
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
        print(f"{len(e.problems)} problem(s) found; nothing was started.", file=sys.stderr)
        return None


def checkCommand(args: argparse.Namespace) -> int:
    """
    C{netd check}: validate and print the normalized config.
    """
    config = _load(args.config, discoverPlugins())
    if config is None:
        return 1
    sys.stdout.write(f"# {config.source}: valid\n")
    sys.stdout.write(tomli_w.dumps(config.toConfig()))
    return 0


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


async def runDaemon(reactor: Any, config: NetdConfig, portsFile: str | None) -> None:
    """
    Start every service, then run until the reactor stops; a signal stops the
    reactor, whose shutdown waits for the daemon's drain.

    Nothing starts before the reactor runs: C{react} calls this first, and the
    reactor installs its SIGTERM/SIGINT handlers only when it starts, so a
    signal sent as soon as netd reports ready would otherwise kill it undrained.
    """
    running: Deferred[None] = Deferred()
    reactor.callWhenRunning(running.callback, None)
    await running
    try:
        daemon = Daemon(config, reactor)
        reactor.addSystemEventTrigger("before", "shutdown", daemon.stopService)
        await daemon.start(portsFile)
    except ServiceStartError as e:
        log.critical("netd cannot start: {error}", error=str(e))
        raise SystemExit(1) from None
    await Deferred()


def runCommand(args: argparse.Namespace) -> int:
    """
    C{netd run}: serve until a signal.
    """
    config = _load(args.config, discoverPlugins())
    if config is None:
        return 1
    startLogging(config.daemon.log_format, config.daemon.log_level)
    log.info("netd {version} starting with {source}", version=__version__, source=config.source)
    react(runDaemon, (config, args.ports_file))
    return 0  # react exits the process; this is for type checkers


def main(argv: list[str] | None = None) -> int:
    """
    The C{netd} console script.
    """
    args = buildParser().parse_args(argv)
    commands = {"run": runCommand, "check": checkCommand, "plugins": pluginsCommand}
    return commands[args.command](args)
