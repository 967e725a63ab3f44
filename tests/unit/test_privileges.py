"""
L{netd.privileges}: C{[daemon] user} and C{group} checked when the config is
read, the order of the system calls of the drop (on a fake system), the early
refusal when netd cannot switch, and the hand-over of the state made as root.
"""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path
from typing import Any

import pytest

from netd.config import parseConfig
from netd.options import ConfigError, InvalidValue
from netd.plugin import discoverPlugins
from netd.privileges import (
    Group,
    PrivilegeDrop,
    PrivilegeError,
    Target,
    User,
    checkCanSwitch,
    dropPrivileges,
    handOverState,
)

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
    assert Target.fromConfig(nobody, None) == Target(NOBODY.pw_uid, NOBODY.pw_gid, "user 'nobody'")
    assert Target.fromConfig(nobody, Group.fromConfig(54321)) == Target(NOBODY.pw_uid, 54321, "user 'nobody'")
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


def test_prepareFailsEarly(tmp_path: Path) -> None:
    """
    PrivilegeDrop.prepare refuses an impossible switch before anything is made, and notes whether the state directory exists.
    """
    nobody = User.fromConfig("nobody")
    with pytest.raises(PrivilegeError):
        PrivilegeDrop.prepare(nobody, None, str(tmp_path / "state"), FakeSystem(uid=1000, gid=1000))
    drop = PrivilegeDrop.prepare(nobody, None, str(tmp_path / "state"), FakeSystem())
    assert not drop.stateDirExisted
    assert PrivilegeDrop.prepare(nobody, None, str(tmp_path), FakeSystem()).stateDirExisted


def test_handOverStateMadeNow(tmp_path: Path) -> None:
    """
    A state directory made during this start is handed over with its tls/ folder and files; symbolic links are changed, not followed.
    """
    state = tmp_path / "state"
    (state / "tls").mkdir(parents=True)
    (state / "tls" / "server.pem").write_text("x")
    (state / "tls" / "link").symlink_to("/etc")
    (state / "other").write_text("not netd's")
    changed: list[tuple[str, int, int]] = []
    paths = handOverState(str(state), True, Target(65534, 65533, "user 'nobody'"), lambda p, u, g: changed.append((p, u, g)))
    assert sorted(changed) == sorted(
        (str(p), 65534, 65533) for p in [state, state / "tls", state / "tls" / "server.pem", state / "tls" / "link"]
    )
    assert sorted(paths) == sorted(path for path, _, _ in changed)


def test_handOverExistingStateKeepsItsOwner(tmp_path: Path) -> None:
    """
    A state directory that existed before keeps its owner; only netd's tls/ folder is handed over, and nothing without a target.
    """
    changed: list[str] = []
    (tmp_path / "tls").mkdir()
    handOverState(str(tmp_path), False, Target(65534, 54321, "user 65534"), lambda p, u, g: changed.append(f"{p}:{u}:{g}"))
    assert changed == [f"{tmp_path / 'tls'}:65534:54321"]
    assert handOverState(str(tmp_path), True, None, lambda p, u, g: changed.append(p)) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_handOverStateForReal(tmp_path: Path) -> None:
    """
    As root, the hand-over really gives the files to the user and group.
    """
    (tmp_path / "state" / "tls").mkdir(parents=True)
    (tmp_path / "state" / "tls" / "ca.pem").write_text("x")
    handOverState(str(tmp_path / "state"), True, Target(NOBODY.pw_uid, NOGROUP_GID, "user 'nobody'"))
    for path in (tmp_path / "state", tmp_path / "state" / "tls", tmp_path / "state" / "tls" / "ca.pem"):
        assert (path.stat().st_uid, path.stat().st_gid) == (NOBODY.pw_uid, NOGROUP_GID)
