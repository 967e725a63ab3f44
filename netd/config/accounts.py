"""
The service account a config names (C{[daemon] user} and C{group}): a name or
id, checked against the system's databases when the config is read, so a
missing account is a config error with its key path, not a failure at start.
"""

from __future__ import annotations

import grp
import pwd
from typing import Any, ClassVar

import attrs

from netd.config.options import InvalidValue

_LARGEST_ID = 2**32 - 2
"""
The largest user or group id (2**32 - 1 is the "no id" value of the system calls).
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
    configJsonSchema: ClassVar[dict[str, Any]] = {"type": ["string", "integer"], "minimum": 0, "pattern": "\\S"}

    @classmethod
    def fromConfig(cls, value: object) -> User:
        """
        Look the user up.

        @raise InvalidValue: when it is not a name or id, or the user database has no such user.
        """
        if (
            isinstance(value, bool)
            or not isinstance(value, (str, int))
            or (isinstance(value, str) and not value.strip())
        ):
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
    configJsonSchema: ClassVar[dict[str, Any]] = {"type": ["string", "integer"], "minimum": 0, "pattern": "\\S"}

    @classmethod
    def fromConfig(cls, value: object) -> Group:
        """
        Look the group up (a numeric id needs no entry in the database).

        @raise InvalidValue: when it is not a name or id, or there is no group of that name.
        """
        if (
            isinstance(value, bool)
            or not isinstance(value, (str, int))
            or (isinstance(value, str) and not value.strip())
        ):
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
