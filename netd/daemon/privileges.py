"""
Bind as root, then serve as someone else: C{[daemon] user} and C{group}.
netd listens on every address first, then drops its groups and user for
good (L{dropPrivileges}); the state directory it wrote as root is opened so
that the user cannot steer those writes (L{openStateDir}), and the user gets
only what a reload reads again (L{handOverCertificates}).  The reasons are in
docs/service.md, "Dropping privileges" and "Design notes".
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Protocol

import attrs
from twisted.logger import Logger

from netd.config.accounts import Group, User
from netd.config.options import KeyPath
from netd.tls.devcerts import defaultStateDir

log = Logger(namespace="netd.daemon.privileges")


class PrivilegeError(Exception):
    """
    netd cannot become the configured user or group; the message says why and
    what to do.

    @ivar key: the config key it is about (C{daemon.user}, C{daemon.state_dir}),
        for messages that name it as config problems do.
    """

    def __init__(self, message: str, key: KeyPath = ("daemon", "user")) -> None:
        super().__init__(message)
        self.key = key


STATE_DIR_KEY: KeyPath = ("daemon", "state_dir")


class System(Protocol):
    """
    The system calls this module makes (the L{os} module; a fake in tests).
    """

    def getuid(self) -> int: ...
    def geteuid(self) -> int: ...
    def getgid(self) -> int: ...
    def getegid(self) -> int: ...
    def getgroups(self) -> list[int]: ...
    def setgroups(self, groups: list[int], /) -> None: ...
    def setgid(self, gid: int, /) -> None: ...
    def setuid(self, uid: int, /) -> None: ...


@attrs.frozen
class Target:
    """
    Who netd is to run as: a user id and a group id (C{group} alone is a
    config error, see L{netd.config.spec.DaemonSpec.crossCheck}).

    @ivar name: the user's name for messages.
    @ivar groups: the groups the user's own processes have (the target group
        and the user database's supplementary ones), for what it can write.
    """

    uid: int
    gid: int
    name: str
    groups: frozenset[int] = frozenset()

    @classmethod
    def fromConfig(cls, user: User | None, group: Group | None) -> Target | None:
        """
        The target of C{[daemon] user} and C{group}: the user's own group when
        C{group} is unset; L{None} when no user is set.
        """
        if user is None:
            return None
        gid = group.gid if group is not None else user.primaryGroup
        groups = frozenset(os.getgrouplist(user.name, gid)) | {gid, user.primaryGroup}
        return cls(uid=user.uid, gid=gid, name=f"user {user.name!r}", groups=groups)

    def reached(self, system: System) -> bool:
        """
        Whether the process already runs with these ids (real and effective).
        """
        return system.getuid() == system.geteuid() == self.uid and system.getgid() == system.getegid() == self.gid

    def describe(self) -> str:
        """
        The ids in words: C{uid 65534, gid 65534}.
        """
        return f"uid {self.uid}, gid {self.gid}"


def checkCanSwitch(target: Target | None, system: System = os) -> None:
    """
    Fail early, before anything is bound, when netd could not become C{target}:
    it is neither root nor already running as it.

    @raise PrivilegeError: saying who netd runs as and what to do.
    """
    if target is None or system.geteuid() == 0 or target.reached(system):
        return
    raise PrivilegeError(
        f"[daemon] asks netd to run as {target.name} ({target.describe()}), but it runs as uid "
        f"{system.geteuid()}, gid {system.getegid()} and is not root, so it cannot switch; start it as root "
        "(it drops to that user once it listens), start it as that user, or remove [daemon] user/group"
    )


def dropPrivileges(target: Target | None, system: System = os) -> bool:
    """
    Become C{target}: clear the supplementary groups, set the group, then the
    user (real, effective and saved ids alike), and check that it took.

    @return: whether the ids were set: not when C{target} is L{None}, nor when
        netd is not root (it then must already be C{target}).
    @raise PrivilegeError: when a step fails or the ids are not the ones asked for.
    """
    if target is None:
        return False
    if system.geteuid() != 0:
        checkCanSwitch(target, system)
        return False
    try:
        system.setgroups([])
        system.setgid(target.gid)
        system.setuid(target.uid)
    except OSError as e:
        raise PrivilegeError(f"cannot switch to {target.name} ({target.describe()}): {e.strerror or e}") from e
    if not target.reached(system) or system.getgroups():
        raise PrivilegeError(
            f"switching to {target.name} did not take: uid {system.getuid()}/{system.geteuid()}, "
            f"gid {system.getgid()}/{system.getegid()}, groups {system.getgroups()}"
        )
    log.info("now running as {name} ({ids}), supplementary groups cleared", name=target.name, ids=target.describe())
    return True


HANDED_OVER = ("server.pem", "server-key.pem")
"""
The files of C{certificate = "auto"} in the state directory's C{tls/} folder
that a reload after the drop reads again, so the user is given them; the CA
key stays root's.
"""

_MAX_SYMLINKS = 40
"""
How many symbolic links a state directory's path may pass through (the
kernel's own bound), so that a loop of links ends in an error.
"""

_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _writers(status: os.stat_result, target: Target) -> str | None:
    """
    How C{target}'s user can change what C{status} describes (its owner can
    always change its mode), or L{None} when it cannot.  Access lists are not
    read.
    """
    if status.st_uid == target.uid:
        return f"it is owned by uid {target.uid}"
    if status.st_mode & stat.S_IWGRP and (status.st_gid == target.gid or status.st_gid in target.groups):
        return f"it is group-writable and its group {status.st_gid} is one of the user's"
    if status.st_mode & stat.S_IWOTH:
        return "it is world-writable"
    return None


def _replaceable(folder: os.stat_result, owner: int, target: Target) -> str | None:
    """
    How C{target}'s user can put something else in place of a name in
    C{folder} owned by uid C{owner}, or L{None} when it cannot: it can write
    the folder, and the folder's sticky bit (which lets only the owner of a
    name, or of the folder, rename it) does not stop it.
    """
    writers = _writers(folder, target)
    if writers is None:
        return None
    if folder.st_mode & stat.S_ISVTX and target.uid not in (folder.st_uid, owner):
        return None
    return writers


def _refusal(stateDir: str, where: str, why: str, target: Target, *, parent: bool = False) -> PrivilegeError:
    """
    The error for a state directory that C{target}'s user could change
    (itself, its C{tls/} folder, or, with C{parent}, a folder on its way).
    """
    way = (
        "set [daemon] state_dir to a folder whose parent folders only root can change, such as /var/lib/netd"
        if parent
        else f"give it to root (chown -R root: {stateDir}; chmod -R go-w {stateDir}) or set [daemon] state_dir "
        "to a folder only root can change"
    )
    return PrivilegeError(
        f"[daemon] state_dir {stateDir!r}: {where!r} can be changed by {target.name}, the user netd drops to "
        f"({why}); netd works in the state directory as root before the drop and will not run on one that user "
        f"controls: {way}",
        STATE_DIR_KEY,
    )


def openStateDir(stateDir: str, target: Target, *, create: bool) -> int:
    """
    Open the state directory as root, for a drop to C{target}: one component at a
    time from C{/}, through directory descriptors, following a symbolic link only
    where the user could not have put it, making missing components as root's
    (0755), and refusing a state directory or C{tls/} the user could change.

    @param create: whether to make missing components; else a missing one raises
        L{FileNotFoundError}, once its parent is checked as if root had made it.
    @return: a descriptor of the state directory (the caller closes it).
    @raise PrivilegeError: when the user could change a component, or the
        state directory or its C{tls/} folder.
    @raise OSError: when a component cannot be opened or made.
    """
    parts = list(reversed(os.path.abspath(stateDir).split("/")))
    where = "/"
    fd = os.open("/", _FOLDER_FLAGS)
    links = 0
    try:
        while parts:
            name = parts.pop()
            if name in ("", "."):
                continue
            if name == "..":
                parent = os.open("..", _FOLDER_FLAGS, dir_fd=fd)
                os.close(fd)
                fd, where = parent, os.path.dirname(where)
                continue
            madeNow = False
            try:
                entry = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not create:
                    replaceable = _replaceable(os.fstat(fd), 0, target)
                    if replaceable is not None:
                        raise _refusal(
                            stateDir,
                            where,
                            f"{replaceable}, so the user could make {name!r} in it",
                            target,
                            parent=True,
                        ) from None
                    raise
                try:
                    os.mkdir(name, 0o700, dir_fd=fd)
                    madeNow = True
                except FileExistsError:
                    pass
                entry = os.stat(name, dir_fd=fd, follow_symlinks=False)
            path = os.path.join(where, name)
            if entry.st_uid == target.uid:
                last = all(part in ("", ".") for part in parts)
                raise _refusal(stateDir, path, f"it is owned by uid {target.uid}", target, parent=not last)
            replaceable = _replaceable(os.fstat(fd), entry.st_uid, target)
            if replaceable is not None:
                raise _refusal(
                    stateDir, where, f"{replaceable}, so the user could replace {name!r} in it", target, parent=True
                )
            if stat.S_ISLNK(entry.st_mode):
                links += 1
                if links > _MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), stateDir)
                link = os.readlink(name, dir_fd=fd)
                if link.startswith("/"):
                    os.close(fd)
                    fd, where = os.open("/", _FOLDER_FLAGS), "/"
                parts.extend(reversed(link.split("/")))
                continue
            child = os.open(name, _FOLDER_FLAGS, dir_fd=fd)
            os.close(fd)
            fd, where = child, path
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (entry.st_dev, entry.st_ino):
                raise _refusal(stateDir, where, "it was replaced while netd opened it", target)
            if madeNow:
                os.fchmod(fd, 0o755)
        writers = _writers(os.fstat(fd), target)
        if writers is not None:
            raise _refusal(stateDir, where, writers, target)
        try:
            tls = os.stat("tls", dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return fd
        if stat.S_ISLNK(tls.st_mode):
            raise _refusal(stateDir, os.path.join(where, "tls"), "it is a symbolic link", target)
        writers = _writers(tls, target)
        if writers is not None:
            raise _refusal(stateDir, os.path.join(where, "tls"), writers, target)
        _checkCAKey(fd, os.path.join(where, "tls", "ca-key.pem"), stateDir, target)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _checkCAKey(state: int, path: str, stateDir: str, target: Target) -> None:
    """
    Refuse a development CA key that C{target}'s user can read or change (an
    older netd gave it to the user): the CA must be made again.

    @param state: the state directory's descriptor (its C{tls/} is checked).
    """
    try:
        key = os.stat("tls/ca-key.pem", dir_fd=state, follow_symlinks=False)
    except FileNotFoundError:
        return
    readable = (
        key.st_uid == target.uid
        or bool(key.st_mode & stat.S_IROTH)
        or (bool(key.st_mode & stat.S_IRGRP) and (key.st_gid == target.gid or key.st_gid in target.groups))
    )
    if readable or stat.S_ISLNK(key.st_mode):
        raise PrivilegeError(
            f"[daemon] state_dir {stateDir!r}: the development CA key {path!r} is not root's alone "
            f"({target.name}, the user netd drops to, can read it or it is a link); a CA whose key the service user "
            f"could read must not be trusted: remove {path!r} (and tell clients to trust the new CA netd makes) "
            "or give it to root (chown root: FILE; chmod 600 FILE) if it never left root's hands",
            STATE_DIR_KEY,
        )


def handOverCertificates(stateDir: str, target: Target) -> list[str]:
    """
    Let C{target}'s user read, after the drop, what a reload reads again:
    the server certificate and key of C{certificate = "auto"} are given to
    it (L{os.fchown} on a descriptor opened without following links, and only
    for a regular file with no other name), and the C{tls/} folder is made
    mode 0755.  Call it as root, just before L{dropPrivileges}.

    @return: the paths given to the user.
    @raise PrivilegeError: when the user could change the state directory.
    """
    try:
        state = openStateDir(stateDir, target, create=False)
    except FileNotFoundError:
        return []
    try:
        try:
            tls = os.open("tls", _FOLDER_FLAGS, dir_fd=state)
        except FileNotFoundError:
            return []
    finally:
        os.close(state)
    handed: list[str] = []
    try:
        if stat.S_IMODE(os.fstat(tls).st_mode) != 0o755:
            os.fchmod(tls, 0o755)
        for name in HANDED_OVER:
            path = os.path.join(stateDir, "tls", name)
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=tls)
            except FileNotFoundError:
                continue
            except OSError as e:
                log.warn("{path} is left to root: {error}", path=path, error=e.strerror or str(e))
                continue
            try:
                status = os.fstat(fd)
                if not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
                    log.warn("{path} is left to root: not a regular file with one name", path=path)
                    continue
                os.fchown(fd, target.uid, target.gid)
                handed.append(path)
            finally:
                os.close(fd)
    finally:
        os.close(tls)
    return handed


def _checkStart(target: Target | None, directory: str, system: System, *, create: bool) -> None:
    """
    Check that netd can become C{target} and, as root, that the user cannot
    change the state directory (made now, as root's, with C{create}).

    @raise PrivilegeError: when it cannot.
    """
    checkCanSwitch(target, system)
    if target is None or target.uid == 0 or system.geteuid() != 0:
        return
    try:
        os.close(openStateDir(directory, target, create=create))
    except OSError as e:
        if isinstance(e, FileNotFoundError) and not create:
            return
        raise PrivilegeError(f"[daemon] state_dir {directory!r}: {e.strerror or e}", STATE_DIR_KEY) from e


@attrs.define
class PrivilegeDrop:
    """
    The privilege drop of one start, in its three moments: L{prepare} before
    anything is made or bound (fails early when the switch is impossible or
    the state directory is the user's, and makes that directory as root's),
    then, once everything listens, calling it gives the user what a reload
    reads again and drops.
    """

    target: Target | None
    stateDir: str
    system: System = os

    @classmethod
    def prepare(
        cls, user: User | None, group: Group | None, stateDir: str | None, system: System = os
    ) -> PrivilegeDrop:
        """
        Check that netd can become the C{[daemon] user} and C{group}, and, as
        root, that the user cannot change the state directory (made now, as
        root's, when it is missing; see L{openStateDir}).

        @param stateDir: C{[daemon] state_dir}; the default one when L{None}.
        @raise PrivilegeError: when netd is neither root nor already that
            user, or the user could change the state directory.
        """
        target = Target.fromConfig(user, group)
        directory = stateDir or defaultStateDir()
        _checkStart(target, directory, system, create=True)
        return cls(target=target, stateDir=directory, system=system)

    @staticmethod
    def check(user: User | None, group: Group | None, stateDir: str | None, system: System = os) -> None:
        """
        What L{prepare} checks, making nothing (for C{netd check}): a state
        directory that is missing, or whose last folders are, passes when the
        folder they would be made in is one the user cannot change.

        @raise PrivilegeError: when L{prepare} would refuse.
        """
        _checkStart(Target.fromConfig(user, group), stateDir or defaultStateDir(), system, create=False)

    def __call__(self) -> None:
        """
        Everything listens: give the user the auto certificates a reload reads
        again, and become the configured user and group.

        @raise PrivilegeError: when the switch fails.
        """
        if self.target is not None and self.target.uid != 0 and self.system.geteuid() == 0:
            try:
                handOverCertificates(self.stateDir, self.target)
            except OSError as e:
                raise PrivilegeError(
                    f"cannot give {self.target.name} its certificates in {self.stateDir!r}: {e}"
                ) from e
        dropPrivileges(self.target, self.system)
