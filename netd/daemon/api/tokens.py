"""
The control API's token: read from C{admin_token_file} (refused, like ssh
refuses a private key, when its group or others may read it), or made by
netd for a TCP API without one (C{STATE_DIR/admin.token}, mode 0600), and
the L{Access} a C{[daemon]} table gives.
"""

from __future__ import annotations

import os
import secrets
import stat

from twisted.logger import Logger

from netd.config.spec import DaemonSpec
from netd.daemon.api.guard import Access
from netd.tls.devcerts import defaultStateDir, writeFile

MAX_TOKEN = 4096
"""
The longest token C{admin_token_file} may hold, in bytes.
"""
GENERATED_TOKEN_FILE = "admin.token"
"""
The file in the state directory that holds the token netd makes itself.
"""

log = Logger(namespace="netd.daemon.api.tokens")


class TokenFileError(Exception):
    """
    A token file cannot be used: missing, unreadable, too open, too long or empty.
    """


def readToken(path: str) -> bytes:
    """
    The token in C{path}, without surrounding whitespace.

    Like ssh with a private key, netd refuses a file that its group or others
    may read or change: the token opens the whole API.

    @raise TokenFileError: saying what is wrong with the file.
    """
    try:
        with open(path, "rb") as f:
            status = os.fstat(f.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise TokenFileError(f"{path!r} is not a regular file")
            if status.st_mode & 0o077:
                raise TokenFileError(
                    f"{path!r} can be read or changed by its group or others (mode "
                    f"{stat.S_IMODE(status.st_mode):04o}); make it readable by its owner only: chmod 600 {path}"
                )
            data = f.read(2 * MAX_TOKEN + 1)
    except OSError as e:
        raise TokenFileError(f"cannot read {path!r}: {e.strerror or e}") from e
    token = data.strip()
    if len(token) > MAX_TOKEN or len(data) > 2 * MAX_TOKEN:
        raise TokenFileError(f"{path!r} holds more than {MAX_TOKEN} bytes; a token is at most {MAX_TOKEN}")
    if not token:
        raise TokenFileError(f"{path!r} is empty; put a secret in it")
    if not all(0x20 <= b <= 0x7E for b in token):
        raise TokenFileError(f"{path!r} holds characters an HTTP header cannot carry (printable ASCII only)")
    return token


def generatedToken(stateDir: str) -> tuple[bytes, str]:
    """
    The token netd makes itself for a TCP control API without
    C{admin_token_file}: the one in C{STATE_DIR/admin.token} if that file is
    fine (so that clients keep theirs across restarts), else a new random one
    written there, mode 0600.

    @return: the token and the file's path.
    @raise OSError: when the state directory or the file cannot be written.
    """
    path = os.path.join(stateDir, GENERATED_TOKEN_FILE)
    os.makedirs(stateDir, mode=0o700, exist_ok=True)
    try:
        return readToken(path), path
    except TokenFileError as e:
        if os.path.lexists(path):
            log.warn("control API: replacing the token file: {why}", why=str(e))
    token = secrets.token_urlsafe(32).encode("ascii")
    writeFile(path, token + b"\n", 0o600)
    return token, path


def loadAccess(spec: DaemonSpec, tcp: bool, boundHost: str | None) -> Access:
    """
    The L{Access} of a C{[daemon]} table: the token of C{admin_token_file}
    (for every endpoint but the probes), or one netd makes for a TCP API (for
    changes only), or none (C{admin_token_file = false}, or a unix socket,
    which its file mode guards).

    @raise TokenFileError: the token file cannot be used, or the generated
        one cannot be written.
    """
    hosts = hostNames(spec, boundHost)
    if isinstance(spec.admin_token_file, str):
        return Access(readToken(spec.admin_token_file), "all", spec.admin_token_file, hosts)
    if spec.admin_token_file is None and tcp:
        stateDir = spec.state_dir if spec.state_dir is not None else defaultStateDir()
        try:
            token, path = generatedToken(stateDir)
        except OSError as e:
            raise TokenFileError(
                f"unset, so netd makes a token in {os.path.join(stateDir, GENERATED_TOKEN_FILE)!r}, which failed: "
                f"{e.strerror or e}; set [daemon] state_dir to a folder this user may write, admin_token_file to a "
                "file holding a secret, or admin_token_file = false"
            ) from e
        return Access(token, "changes", path, hosts)
    return Access(None, "all", None, hosts)


def hostNames(spec: DaemonSpec, boundHost: str | None) -> frozenset[str]:
    """
    The C{Host} names answered besides localhost and loopback literals:
    C{admin_hosts} and the address listened on (unless it is a wildcard such
    as 0.0.0.0, which no client should name), lower case.
    """
    hosts = frozenset(h.lower().rstrip(".") for h in spec.admin_hosts)
    if boundHost is None or boundHost in ("0.0.0.0", "::"):
        return hosts
    return hosts | {boundHost.lower()}


def describeAccess(access: Access) -> str:
    """
    What the API requires, in words, for its start-up line.
    """
    if access.token is None:
        return "no token"
    if access.scope == "all":
        return f"token required (from {access.tokenFile})"
    return f"token required for changes (made in {access.tokenFile})"
