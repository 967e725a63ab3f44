"""
L{netd.daemon.privileges}: C{[daemon] user} and C{group} checked when the config is
read, the order of the system calls of the drop (on a fake system), the early
refusal when netd cannot switch, the refusal of a state directory the user
could change, and the certificates given to the user by descriptor.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path
from typing import Any

import pytest

from netd.config.accounts import Group, User
from netd.config.options import ConfigError, InvalidValue
from netd.config.spec import parseConfig
from netd.daemon.privileges import (
    PrivilegeDrop,
    PrivilegeError,
    Target,
    checkCanSwitch,
    dropPrivileges,
    handOverCertificates,
    openStateDir,
)
from netd.registry import discoverPlugins

NOBODY = pwd.getpwnam("nobody")
NOGROUP_GID = NOBODY.pw_gid
ECHO = {"name": "echo", "plugin": "echo", "listen": ["tcp:0:interface=127.0.0.1"]}


class FakeSystem:
    """
    The process's ids as the kernel keeps them: root may set any, others none,
    and every call is recorded.
    """

    def __init__(self, uid: int = 0, gid: int = 0, groups: list[int] | None = None, ignoreSetuid: bool = False) -> None:
        self.uid = self.euid = uid
        self.gid = self.egid = gid
        self.groups = [0, 4] if groups is None else groups
        self.calls: list[tuple[str, Any]] = []
        self.ignoreSetuid = ignoreSetuid

    def getuid(self) -> int:
        return self.uid

    def geteuid(self) -> int:
        return self.euid

    def getgid(self) -> int:
        return self.gid

    def getegid(self) -> int:
        return self.egid

    def getgroups(self) -> list[int]:
        return list(self.groups)

    def _privileged(self) -> None:
        if self.euid != 0:
            raise PermissionError(1, "Operation not permitted")

    def setgroups(self, groups: list[int]) -> None:
        self.calls.append(("setgroups", list(groups)))
        self._privileged()
        self.groups = list(groups)

    def setgid(self, gid: int) -> None:
        self.calls.append(("setgid", gid))
        self._privileged()
        self.gid = self.egid = gid

    def setuid(self, uid: int) -> None:
        self.calls.append(("setuid", uid))
        self._privileged()
        if not self.ignoreSetuid:
            self.uid = self.euid = uid


def config(**daemon: Any) -> Any:
    """
    A validated config with C{daemon} as its [daemon] table.
    """
    return parseConfig({"daemon": {"admin": False, **daemon}, "services": [ECHO]}, "test.toml", discoverPlugins())


@pytest.mark.parametrize("value", ["nobody", NOBODY.pw_uid, str(NOBODY.pw_uid)])
def test_userByNameOrId(value: str | int) -> None:
    """
    A user is found by name, by numeric id or by a string of digits, with its primary group.
    """
    user = User.fromConfig(value)
    assert (user.name, user.uid, user.primaryGroup) == ("nobody", NOBODY.pw_uid, NOBODY.pw_gid)
    assert user.toConfig() == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("no-such-user-netd", "unknown user 'no-such-user-netd'", id="unknown-name"),
        pytest.param(-1, "user id -1 is out of range", id="negative"),
        pytest.param(2**32, "out of range", id="too-large"),
        pytest.param(True, "expected a user name or numeric id", id="boolean"),
        pytest.param("", "expected a user name", id="empty"),
        pytest.param(["nobody"], "expected a user name", id="array"),
    ],
)
def test_userRejected(value: object, message: str) -> None:
    """
    An unknown user, an id out of range or a value of the wrong type is refused with the reason.
    """
    with pytest.raises(InvalidValue, match=message):
        User.fromConfig(value)


def test_unknownUidRejected() -> None:
    """
    A numeric user id that the user database does not know is refused, since netd needs its group.
    """
    known = {entry.pw_uid for entry in pwd.getpwall()}
    unknown = next(uid for uid in range(40000, 60000) if uid not in known)
    with pytest.raises(InvalidValue, match=f"unknown user {unknown}"):
        User.fromConfig(unknown)


def test_groupByNameOrAnyId() -> None:
    """
    A group is found by name, and any numeric id is taken as is.
    """
    assert Group.fromConfig(grp.getgrgid(NOGROUP_GID).gr_name).gid == NOGROUP_GID
    assert Group.fromConfig(54321).gid == 54321
    with pytest.raises(InvalidValue, match="unknown group 'no-such-group-netd'"):
        Group.fromConfig("no-such-group-netd")


def test_configErrorsNameTheKeyPath() -> None:
    """
    An unknown user or group in the config is a config error at daemon.user or daemon.group, reported together.
    """
    with pytest.raises(ConfigError) as info:
        config(user="no-such-user-netd", group="no-such-group-netd")
    rendered = str(info.value)
    assert "test.toml: daemon.user: unknown user 'no-such-user-netd'" in rendered
    assert "test.toml: daemon.group: unknown group 'no-such-group-netd'" in rendered


def test_configKeepsUserAsWritten() -> None:
    """
    The normalized config shows user and group as written, and leaves them out when unset.
    """
    daemon = config(user="nobody", group=NOGROUP_GID).toConfig()["daemon"]
    assert (daemon["user"], daemon["group"]) == ("nobody", NOGROUP_GID)
    assert "user" not in config().toConfig()["daemon"]


def test_targetFromConfig() -> None:
    """
    The user's own group is used when group is unset; no user means no target.
    """
    nobody = User.fromConfig("nobody")
    own = Target.fromConfig(nobody, None)
    other = Target.fromConfig(nobody, Group.fromConfig(54321))
    assert own is not None and other is not None
    assert (own.uid, own.gid, own.name) == (NOBODY.pw_uid, NOBODY.pw_gid, "user 'nobody'")
    assert (other.uid, other.gid, other.name) == (NOBODY.pw_uid, 54321, "user 'nobody'")
    assert Target.fromConfig(None, None) is None


def test_groupWithoutUserRefused() -> None:
    """
    group without user is a config error at daemon.group, since netd would keep running as root (uid 0) with only its group changed.
    """
    with pytest.raises(ConfigError) as info:
        config(group=NOGROUP_GID)
    rendered = str(info.value)
    assert "test.toml: daemon.group: " in rendered
    assert "[daemon] group needs [daemon] user" in rendered


def test_dropOrder() -> None:
    """
    As root, the drop clears the supplementary groups, then sets the group, then the user.
    """
    system = FakeSystem()
    assert dropPrivileges(Target(65534, 65533, "user 'nobody'"), system)
    assert system.calls == [("setgroups", []), ("setgid", 65533), ("setuid", 65534)]
    assert (system.uid, system.euid, system.gid, system.egid, system.groups) == (65534, 65534, 65533, 65533, [])


def test_dropChecksThatItTook() -> None:
    """
    A switch whose ids do not come out as asked for is an error, not a silent root process.
    """
    with pytest.raises(PrivilegeError, match="did not take"):
        dropPrivileges(Target(65534, 65534, "user 'nobody'"), FakeSystem(ignoreSetuid=True))


def test_dropFailureIsAPrivilegeError() -> None:
    """
    A system call that fails becomes a PrivilegeError naming the target.
    """

    class Refusing(FakeSystem):
        def setgid(self, gid: int) -> None:
            raise PermissionError(1, "Operation not permitted")

    with pytest.raises(PrivilegeError, match="cannot switch to user 'nobody' .*Operation not permitted"):
        dropPrivileges(Target(65534, 65534, "user 'nobody'"), Refusing())


def test_noTargetNoCalls() -> None:
    """
    Without user or group nothing is called, as root or not.
    """
    system = FakeSystem()
    assert not dropPrivileges(None, system)
    checkCanSwitch(None, FakeSystem(uid=1000, gid=1000))
    assert system.calls == []


def test_notRootButAlreadyTheUser() -> None:
    """
    Started as the configured user already, netd neither complains nor calls anything.
    """
    system = FakeSystem(uid=65534, gid=65534)
    target = Target(65534, 65534, "user 'nobody'")
    checkCanSwitch(target, system)
    assert not dropPrivileges(target, system)
    assert system.calls == []


def test_notRootOtherUserRefused() -> None:
    """
    Started as another user that is not root, netd refuses with who it runs as and what to do.
    """
    with pytest.raises(PrivilegeError) as info:
        checkCanSwitch(Target(65534, 65534, "user 'nobody'"), FakeSystem(uid=1000, gid=1000))
    message = str(info.value)
    assert "run as user 'nobody' (uid 65534, gid 65534)" in message
    assert "runs as uid 1000, gid 1000 and is not root" in message
    assert "start it as root" in message


asRoot = pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
USER = Target(NOBODY.pw_uid, NOGROUP_GID, "user 'nobody'", frozenset({NOGROUP_GID}))


def refusal(stateDir: Path) -> str:
    """
    The message of openStateDir's refusal of C{stateDir} for nobody.
    """
    with pytest.raises(PrivilegeError) as info:
        os.close(openStateDir(str(stateDir), USER, create=True))
    return str(info.value)


@asRoot
def test_prepareFailsEarly(tmp_path: Path) -> None:
    """
    PrivilegeDrop.prepare refuses an impossible switch before anything is made, and makes a missing state directory (and its parents) root's, mode 0755, whatever the umask.
    """
    nobody = User.fromConfig("nobody")
    state = tmp_path / "a" / "state"
    with pytest.raises(PrivilegeError):
        PrivilegeDrop.prepare(nobody, None, str(state), FakeSystem(uid=1000, gid=1000))
    assert not state.exists()
    previous = os.umask(0)
    try:
        PrivilegeDrop.prepare(nobody, None, str(state), FakeSystem())
    finally:
        os.umask(previous)
    for path in (tmp_path / "a", state):
        assert (path.stat().st_uid, stat.S_IMODE(path.stat().st_mode)) == (0, 0o755)


def test_targetKnowsTheUsersGroups() -> None:
    """
    A target knows the groups the user's own processes have, its primary group among them, for what it can write.
    """
    target = Target.fromConfig(User.fromConfig("nobody"), Group.fromConfig(54321))
    assert target is not None
    assert {54321, NOBODY.pw_gid} <= target.groups
    assert set(os.getgrouplist("nobody", 54321)) <= target.groups


@asRoot
@pytest.mark.parametrize("which", ["state", "tls"])
def test_stateDirOwnedByTheUserRefused(tmp_path: Path, which: str) -> None:
    """
    A state directory, or its tls/ folder, owned by the user is refused, naming [daemon] state_dir, the path, the user and the way out.
    """
    state = tmp_path / "state"
    (state / "tls").mkdir(parents=True)
    owned = state if which == "state" else state / "tls"
    os.chown(owned, NOBODY.pw_uid, -1)
    owned.chmod(0o700)
    message = refusal(state)
    assert (
        f"[daemon] state_dir {str(state)!r}: {str(owned)!r} can be changed by user 'nobody', the user netd drops to"
        in message
    )
    assert f"it is owned by uid {NOBODY.pw_uid}" in message
    assert f"chown -R root: {state}" in message


@asRoot
def test_stateDirWritableThroughGroupOrWorldRefused(tmp_path: Path) -> None:
    """
    A state directory writable through one of the user's groups, or by everyone, is refused; writable by another group it is not.
    """
    state = tmp_path / "state"
    state.mkdir()
    other = next(g for g in range(40000, 60000) if g not in USER.groups)
    os.chown(state, 0, NOGROUP_GID)
    state.chmod(0o775)
    assert "group-writable and its group" in refusal(state)
    os.chown(state, 0, other)
    os.close(openStateDir(str(state), USER, create=False))
    state.chmod(0o757)
    assert "world-writable" in refusal(state)


@asRoot
def test_ancestorTheUserCanChangeRefused(tmp_path: Path) -> None:
    """
    A folder on the way that the user can write is refused, since the user could replace what follows; a sticky one (such as /tmp) is not, as long as what follows is not the user's.
    """
    parent = tmp_path / "shared"
    (parent / "state").mkdir(parents=True)
    parent.chmod(0o777)
    message = refusal(parent / "state")
    assert f"{str(parent)!r} can be changed by user 'nobody'" in message
    assert "(it is world-writable, so the user could replace 'state' in it)" in message
    assert "whose parent folders only root can change" in message
    parent.chmod(0o1777)
    os.close(openStateDir(str(parent / "state"), USER, create=False))
    os.close(openStateDir(str(parent / "new"), USER, create=True))
    assert (parent / "new").stat().st_uid == 0


@asRoot
def test_symbolicLinksOfTheUserAreNotFollowed(tmp_path: Path) -> None:
    """
    A state directory that is a link the user made in a sticky folder is refused (netd would work in the folder it points to); a link of root's in root's folder is followed.
    """
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)
    target = tmp_path / "elsewhere"
    (target / "tls").mkdir(parents=True)
    (shared / "state").symlink_to(target)
    os.chown(shared / "state", NOBODY.pw_uid, NOGROUP_GID, follow_symlinks=False)
    assert f"{str(shared / 'state')!r} can be changed by user 'nobody'" in refusal(shared / "state")
    os.chown(shared / "state", 0, 0, follow_symlinks=False)
    fd = openStateDir(str(shared / "state"), USER, create=False)
    try:
        assert (os.fstat(fd).st_ino) == target.stat().st_ino
    finally:
        os.close(fd)
    (tmp_path / "root-link").symlink_to(target)
    os.close(openStateDir(str(tmp_path / "root-link"), USER, create=False))
    (target / "tls").rmdir()
    (target / "tls").symlink_to("/etc")
    assert "'tls')" not in refusal(target) and "it is a symbolic link" in refusal(target)


@asRoot
def test_certificatesGivenByDescriptorCAKeyKept(tmp_path: Path) -> None:
    """
    Before the drop, the server certificate and key of certificate = "auto" become the user's and tls/ mode 0755; the CA key stays root's, mode 0600.
    """
    from netd.tls.devcerts import autoCertificate

    state = tmp_path / "state"
    os.close(openStateDir(str(state), USER, create=True))
    autoCertificate(str(state))
    handed = handOverCertificates(str(state), USER)
    tls = state / "tls"
    assert handed == [str(tls / "server.pem"), str(tls / "server-key.pem")]
    for name in ("server.pem", "server-key.pem"):
        assert ((tls / name).stat().st_uid, (tls / name).stat().st_gid) == (NOBODY.pw_uid, NOGROUP_GID)
    assert stat.S_IMODE(tls.stat().st_mode) == 0o755
    caKey = (tls / "ca-key.pem").stat()
    assert (caKey.st_uid, caKey.st_gid, stat.S_IMODE(caKey.st_mode)) == (0, 0, 0o600)


@asRoot
@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_linkedCertificateNotGiven(tmp_path: Path, kind: str) -> None:
    """
    A server key that is a symbolic link, or a file with a second name, is left to root: the file it names keeps its owner.
    """
    state = tmp_path / "state"
    (state / "tls").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("root's")
    if kind == "symlink":
        (state / "tls" / "server-key.pem").symlink_to(victim)
    else:
        os.link(victim, state / "tls" / "server-key.pem")
    assert handOverCertificates(str(state), USER) == []
    assert victim.stat().st_uid == 0


@asRoot
def test_dropHandsOverThenDrops(tmp_path: Path) -> None:
    """
    Calling the prepared drop as root gives the user the server key, then drops; without root it only checks.
    """
    from netd.tls.devcerts import autoCertificate

    nobody = User.fromConfig("nobody")
    system = FakeSystem()
    drop = PrivilegeDrop.prepare(nobody, None, str(tmp_path / "state"), system)
    autoCertificate(str(tmp_path / "state"))
    drop()
    assert (tmp_path / "state" / "tls" / "server-key.pem").stat().st_uid == NOBODY.pw_uid
    assert system.calls == [("setgroups", []), ("setgid", NOBODY.pw_gid), ("setuid", NOBODY.pw_uid)]


@asRoot
@pytest.mark.parametrize("how", ["owner", "mode"])
def test_caKeyTheUserCanReadRefused(tmp_path: Path, how: str) -> None:
    """
    A development CA key that the user owns or may read (an older netd gave it away) is refused, saying to remove it so that a new CA is made.
    """
    tls = tmp_path / "state" / "tls"
    tls.mkdir(parents=True)
    key = tls / "ca-key.pem"
    key.write_text("key")
    key.chmod(0o600)
    os.close(openStateDir(str(tmp_path / "state"), USER, create=False))
    if how == "owner":
        os.chown(key, NOBODY.pw_uid, -1)
    else:
        key.chmod(0o644)
    message = refusal(tmp_path / "state")
    assert f"the development CA key {str(key)!r} is not root's alone" in message
    assert f"remove {str(key)!r}" in message


@asRoot
def test_checkMakesNothingAndRefusesWhatPrepareRefuses(tmp_path: Path) -> None:
    """
    PrivilegeDrop.check (netd check) makes no folder; it passes a missing state directory whose parent only root can change, and refuses, as prepare does, one whose parent the user can write (the user could make it first) or one the user owns.
    """
    nobody = User.fromConfig("nobody")
    state = tmp_path / "a" / "state"
    PrivilegeDrop.check(nobody, None, str(state), FakeSystem())
    assert not (tmp_path / "a").exists()
    (tmp_path / "a").mkdir()
    (tmp_path / "a").chmod(0o777)
    with pytest.raises(PrivilegeError) as checked:
        PrivilegeDrop.check(nobody, None, str(state), FakeSystem())
    assert "world-writable, so the user could make 'state' in it" in str(checked.value)
    assert checked.value.key == ("daemon", "state_dir")
    assert not state.exists()
    with pytest.raises(PrivilegeError) as prepared:
        PrivilegeDrop.prepare(nobody, None, str(state), FakeSystem())
    assert prepared.value.key == ("daemon", "state_dir")
    (tmp_path / "a").chmod(0o755)
    os.chown(state, NOBODY.pw_uid, -1)
    with pytest.raises(PrivilegeError, match="it is owned by uid"):
        PrivilegeDrop.check(nobody, None, str(state), FakeSystem())


def test_checkRefusesAnImpossibleSwitch() -> None:
    """
    PrivilegeDrop.check refuses, at daemon.user, a switch netd could not make (not root, not that user), as prepare does.
    """
    with pytest.raises(PrivilegeError) as info:
        PrivilegeDrop.check(User.fromConfig("nobody"), None, "/nonexistent", FakeSystem(uid=1000, gid=1000))
    assert info.value.key == ("daemon", "user")
    assert "is not root, so it cannot switch" in str(info.value)
