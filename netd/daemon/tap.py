"""
netd under twistd (C{twistd -n netd -c FILE}): the C{netd} L{IServiceMaker}
that the drop-in C{twisted/plugins/netd_plugin.py} names, so that twistd's
own options apply around the same application as C{netd run}
(L{netd.daemon.application.NetdApplication}).  twistd binds with its own
rights, before C{--uid}, so ports below 1024 work.  netd's modules are
imported only once C{$LISTEN_FDNAMES} is complete
(L{netd.daemon.systemd.completeListenNames}).
"""

from __future__ import annotations

import sys
from typing import IO, TYPE_CHECKING, Any, cast

from twisted.application.service import IService
from twisted.logger import ILogObserver
from twisted.python import usage
from twisted.python.logfile import LogFile

from netd.daemon.systemd import completeListenNames

if TYPE_CHECKING:
    from netd.config.spec import NetdConfig


class Options(usage.Options):
    """
    The options of C{twistd netd}: those of C{netd run}.
    """

    synopsis = "[-c FILE] [--ports-file FILE] [--admin LISTEN]"
    longdesc = (
        "Run the services of a netd config (the embedded default without -c) under twistd. "
        "SIGTERM and SIGINT stop accepting and drain open connections for up to [daemon] shutdown_timeout seconds; "
        "SIGHUP reloads the config. Without --logger, netd logs in its [daemon] log_format (text or json) "
        "where twistd would (--logfile, or stdout with -n)."
    )
    optParameters = [
        ["config", "c", None, "the TOML config file (default: the embedded default config)"],
        [
            "ports-file",
            None,
            None,
            "once every service listens, write the bound addresses to FILE as JSON (as netd run --ports-file)",
        ],
        [
            "admin",
            None,
            None,
            "where the control API listens, in place of the config's [daemon] admin (reloads keep it), "
            "as netd run --admin",
        ],
    ]

    def postOptions(self) -> None:
        """
        Load and validate the config now, so that a bad one is refused as a
        usage error, with every problem, before twistd starts anything.
        """
        completeListenNames()
        from netd.config.options import ConfigError, InvalidValue
        from netd.config.spec import loadConfig
        from netd.daemon.daemon import adminOverride, withDaemonOverrides
        from netd.registry import discoverPlugins
        from netd.words import counted

        try:
            config = loadConfig(self["config"], discoverPlugins())
        except ConfigError as e:
            raise usage.UsageError(f"{e}\n{counted(len(e.problems), 'problem')} found; nothing was started.") from None
        try:
            self["daemonOverrides"] = {} if self["admin"] is None else adminOverride(config, self["admin"])
        except InvalidValue as e:
            raise usage.UsageError("\n".join(f"twistd netd --admin: {p}" for p in str(e).splitlines())) from None
        self["netdConfig"] = withDaemonOverrides(config, self["daemonOverrides"])


def makeService(options: Options) -> IService:
    """
    The application of C{twistd netd}, which reloads on SIGHUP and logs in
    netd's format.
    """
    completeListenNames()
    from twisted.internet import reactor
    from twisted.logger import Logger

    from netd import __version__
    from netd.daemon.application import NetdApplication
    from netd.daemon.systemd import Notifier

    config: NetdConfig = options["netdConfig"]
    Logger(namespace="netd.daemon.tap").info(
        "netd {version} starting with {source}", version=__version__, source=config.source
    )
    application = NetdApplication(
        config,
        reactor,
        Notifier.fromEnvironment(),
        portsFile=options["ports-file"],
        reloadOnHangup=True,
        daemonOverrides=options["daemonOverrides"],
    )
    application.logObserver = _logObserver(config, getattr(options, "parent", None))
    return application


def _logObserver(config: NetdConfig, twistdOptions: Any) -> ILogObserver | None:
    """
    netd's log observer (L{netd.logs.makeObserver}) writing where
    twistd would write its own (C{--logfile}, C{-} or, with C{-n}, stdout;
    C{twistd.log} when daemonizing); L{None} when C{--logger} or
    C{--syslog} chose another observer.
    """
    from netd.logs import makeObserver

    def option(name: str) -> Any:
        return twistdOptions.get(name) if twistdOptions is not None else None

    if option("logger") is not None or option("syslog"):
        return None
    path = option("logfile")
    stream: IO[str]
    if path == "-" or (not path and (twistdOptions is None or option("nodaemon"))):
        stream = sys.stdout
    else:
        stream = cast(IO[str], LogFile.fromFullPath(path or "twistd.log"))
    return makeObserver(config.daemon.log_format, config.daemon.log_level, stream)
