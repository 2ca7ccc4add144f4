"""Local users: passwd lookup, group membership, and who does the second factor."""
from __future__ import annotations

import grp
import os
import pwd
from typing import TYPE_CHECKING

from .record import Record
from .errors import UserLookupError

if TYPE_CHECKING:  # pragma: no cover - typing only; config is already loaded wherever this runs
    from .config import DuoIdentity, UsersSettings


class LocalUser(Record):
    name: str
    uid: int
    gid: int
    home: str
    shell: str


def lookup(name: str) -> LocalUser | None:
    """The passwd entry for ``name``, or None when there is no such user."""
    if not name or "\0" in name or len(name) > 256:
        return None
    try:
        entry = pwd.getpwnam(name)
    except (KeyError, UnicodeError):  # UnicodeError: not encodable, so not a valid user name
        return None
    except OSError as exc:
        raise UserLookupError(f"cannot look up user {name!r}: {exc}") from None
    return LocalUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell)


def lookup_uid(uid: int) -> LocalUser | None:
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return None
    except OSError as exc:
        raise UserLookupError(f"cannot look up uid {uid}: {exc}") from None
    return LocalUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell)


def group_names(user: LocalUser) -> list[str]:
    """Names of the user's primary and supplementary groups (a gid with no name counts by number).

    Raises :class:`UserLookupError` when the group database cannot be asked: a
    failed lookup must never exempt anyone.
    """
    try:
        gids = os.getgrouplist(user.name, user.gid)
    except OSError as exc:
        raise UserLookupError(f"cannot get groups for {user.name!r}: {exc}") from None
    names = []
    for gid in dict.fromkeys(gids):
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            names.append(str(gid))
        except OSError as exc:
            raise UserLookupError(f"cannot look up group {gid}: {exc}") from None
    return names


def second_factor_user(service: str, target: LocalUser, caller_uid: int) -> LocalUser | None:
    """Who does Duo: for ``su``/``su-l`` to root it is the calling user (duo_unix's rule), else the target."""
    if service in ("su", "su-l") and target.uid == 0 and caller_uid != 0:
        return lookup_uid(caller_uid)
    return target


def duo_identity_for(settings: "UsersSettings", person: LocalUser) -> "DuoIdentity | None":
    """Who ``person`` is at Duo (``map_file``, ``user_id=``), or None when ``users.groups`` exempts them.

    The one rule for logins, ``check --user`` and the ``admin`` commands. Raises
    :class:`UserLookupError` when the groups cannot be looked up (never an exemption).
    """
    if settings.groups and not settings.requires_duo(group_names(person)):
        return None
    return settings.duo_identity(person.name)
