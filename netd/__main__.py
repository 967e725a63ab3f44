"""
The C{netd} command (and C{python -m netd}): L{netd.daemon.cli.main}, loaded with the
cyclic garbage collector paused.

Loading the daemon's modules makes some 65,000 objects (modules, classes,
functions) that live as long as the process, and the collector would scan them
again and again while they are made: a sixth of start-up's CPU.  It pauses for
these imports, and what they made is then frozen (moved out of the
collector's sight, C{gc.freeze}) rather than scanned once more; the 0.6 MiB of
garbage among it (attrs' class builders) is never freed.  Done here rather
than in L{netd.daemon.cli}, so that importing netd as a library changes nothing.

Before those imports, C{$LISTEN_FDNAMES} is completed
(L{netd.daemon.systemd.completeListenNames}): L{netd.daemon.cli} imports
C{twisted.internet.endpoints}, which reads the sockets systemd passed as it
is imported.
"""

import gc
import sys


def main() -> int:
    """
    Complete the socket-activation names, load L{netd.daemon.cli} with the
    collector paused, then run the command line.
    """
    from netd.daemon.systemd import completeListenNames

    completeListenNames()
    collecting = gc.isenabled()
    gc.disable()
    from netd.daemon.cli import main as commandLine

    gc.freeze()
    if collecting:
        gc.enable()
    return commandLine()


if __name__ == "__main__":
    sys.exit(main())
