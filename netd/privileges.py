"""
Bind as root, then serve as someone else: C{[daemon] user} and C{group}.

Started as root with C{user} set, netd listens on every address first (ports
below 1024 included), then, before it serves any client, clears its
supplementary groups, sets its group and then its user (L{dropPrivileges}: in
that order, since a process that is no longer root can change neither).  The
real, effective and saved ids all change, so there is no way back.

Started as another user, netd refuses to start unless it already is that user
(L{checkCanSwitch}), so a config meant for root is not silently run with other
rights.

Files made while still root (the state directory and the certificates of
C{certificate = "auto"}) are handed to the user (L{handOverState}), so that a
later reload can renew them.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable
from typing import ClassVar, Protocol

import attrs
from twisted.logger import Logger

from netd.certs import defaultStateDir
from netd.options import InvalidValue

log = Logger(namespace="netd.privileges")

_LARGEST_ID = 2**32 - 2
"""
The largest user or group id (2**32 - 1 is the "no id" value of the system calls).
"""


class PrivilegeError(Exception):
    """
    netd cannot become the configured user or group; the message says why and
    what to do.
    """


def _numericId(value: object, what: str) -> int | None:
    """
    The id a config value names by number (an integer, or a string of digits),
    or L{None} when it is a name.
    """
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isdigit():
        number = int(value)
    else:
        return None
    if not 0 <= number <= _LARGEST_ID:
        raise InvalidValue(f"{what} id {number} is out of range; expected 0 to {_LARGEST_ID}")
    return number


@attrs.frozen
class User:
    """
    The C{[daemon] user}: an entry of the system's user database, found by name
    or by id when the config is read.

    @ivar value: the name or id as written.
    @ivar primaryGroup: the user's group in the database, used when
        C{[daemon] group} is unset.
    """

    value: str | int
    name: str
    uid: int
    primaryGroup: int

    configTypeName: ClassVar[str] = "a user name or numeric id, such as 'netd' or 65534"

    @classmethod
    def fromConfig(cls, value: object) -> User:
        """
        Look the user up.

        @raise InvalidValue: when it is not a name or id, or the user database has no such user.
        """
        if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str) and not value.strip()):
            raise InvalidValue(f"expected {cls.configTypeName}, got {value!r}")
        number = _numericId(value, "user")
        try:
            entry = pwd.getpwuid(number) if number is not None else pwd.getpwnam(value)  # type: ignore[arg-type]
        except KeyError:
            raise InvalidValue(f"unknown user {value!r}: the system's user database has no such user") from None
        return cls(value=value, name=entry.pw_name, uid=entry.pw_uid, primaryGroup=entry.pw_gid)

    def toConfig(self) -> str | int:
        """
        The user as written.
        """
        return self.value


@attrs.frozen
class Group:
    """
    The C{[daemon] group}: a group name from the system's group database, or
    any numeric id.

    @ivar value: the name or id as written.
    """

    value: str | int
    gid: int

    configTypeName: ClassVar[str] = "a group name or numeric id, such as 'netd' or 65534"

    @classmethod
    def fromConfig(cls, value: object) -> Group:
        """
        Look the group up (a numeric id needs no entry in the database).

        @raise InvalidValue: when it is not a name or id, or there is no group of that name.
        """
        if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str) and not value.strip()):
            raise InvalidValue(f"expected {cls.configTypeName}, got {value!r}")
        number = _numericId(value, "group")
        if number is not None:
            return cls(value=value, gid=number)
        try:
            entry = grp.getgrnam(value)  # type: ignore[arg-type]
        except KeyError:
            raise InvalidValue(f"unknown group {value!r}: the system's group database has no such group") from None
        return cls(value=value, gid=entry.gr_gid)

    def toConfig(self) -> str | int:
        """
        The group as written.
        """
        return self.value


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
    config error, see L{netd.config.DaemonSpec.crossCheck}).

    @ivar name: the user's name for messages.
    """

    uid: int
    gid: int
    name: str

    @classmethod
    def fromConfig(cls, user: User | None, group: Group | None) -> Target | None:
        """
        The target of C{[daemon] user} and C{group}: the user's own group when
        C{group} is unset; L{None} when no user is set.
        """
        if user is None:
            return None
        gid = group.gid if group is not None else user.primaryGroup
        return cls(uid=user.uid, gid=gid, name=f"user {user.name!r}")

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


def handOverState(
    stateDir: str, created: bool, target: Target | None, chown: Callable[[str, int, int], None] = os.lchown
) -> list[str]:
    """
    Give C{target} what netd made in its state directory while still root, so
    that it can read and renew it after the drop (call it as root, just
    before L{dropPrivileges}): the state directory itself
    if netd created it during this start (an existing one keeps its owner), and
    everything in its C{tls/} folder (the certificates of
    C{certificate = "auto"}).  Symbolic links are changed, never followed.

    @param created: whether the state directory did not exist before this start.
    @param chown: L{os.lchown}, or its stand-in in tests.
    @return: the paths handed over.
    """
    if target is None:
        return []
    uid, gid = target.uid, target.gid
    paths: list[str] = []
    if created and os.path.isdir(stateDir):
        paths.append(stateDir)
    tls = os.path.join(stateDir, "tls")
    if os.path.isdir(tls) and not os.path.islink(tls):
        for folder, folders, files in os.walk(tls):
            paths.append(folder)
            paths.extend(os.path.join(folder, name) for name in files)
            paths.extend(os.path.join(folder, name) for name in folders if os.path.islink(os.path.join(folder, name)))
    for path in paths:
        chown(path, uid, gid)
    return paths


@attrs.define
class PrivilegeDrop:
    """
    The privilege drop of one start, in its three moments: L{prepare} before
    anything is made or bound (fails early when the switch is impossible),
    then, once everything listens, calling it hands the state over and drops.
    """

    target: Target | None
    stateDir: str
    stateDirExisted: bool
    system: System = os

    @classmethod
    def prepare(
        cls, user: User | None, group: Group | None, stateDir: str | None, system: System = os
    ) -> PrivilegeDrop:
        """
        Check that netd can become the C{[daemon] user} and C{group}, and note
        whether the state directory exists yet (if netd makes it, the user gets it).

        @param stateDir: C{[daemon] state_dir}; the default one when L{None}.
        @raise PrivilegeError: when netd is neither root nor already that user.
        """
        target = Target.fromConfig(user, group)
        checkCanSwitch(target, system)
        directory = stateDir or defaultStateDir()
        return cls(target=target, stateDir=directory, stateDirExisted=os.path.exists(directory), system=system)

    def __call__(self) -> None:
        """
        Everything listens: hand over the state made as root, and become the
        configured user and group.

        @raise PrivilegeError: when the switch fails.
        """
        if self.target is not None and self.system.geteuid() == 0:
            try:
                handOverState(self.stateDir, not self.stateDirExisted, self.target)
            except OSError as e:
                raise PrivilegeError(f"cannot give {self.target.name} its state in {self.stateDir!r}: {e}") from e
        dropPrivileges(self.target, self.system)
