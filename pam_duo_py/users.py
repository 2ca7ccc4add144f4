"""Local users: passwd lookup, group membership, and who does the second factor."""
from __future__ import annotations

import grp
import os
import pwd

from .record import Record
from .errors import UserLookupError

TYPE_CHECKING = False
if TYPE_CHECKING:
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
    """Names of the user's primary and supplementary groups.

    Raises :class:`UserLookupError` when the group database cannot be asked or a
    gid has no name: ``grp.getgrgid`` gives the same ``KeyError`` for "no such
    group" and for "the group database cannot be read", and a failed lookup
    must never exempt anyone.
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
            raise UserLookupError(f"group {gid} of {user.name!r} has no name (no such group, "
                                  "or the group database cannot be read)") from None
        except OSError as exc:
            raise UserLookupError(f"cannot look up group {gid}: {exc}") from None
    return names


def requires_duo(settings: UsersSettings, user: LocalUser) -> bool:
    """Whether ``user`` must do Duo under ``users.groups`` (which must not be empty).

    glibc's ``getgrouplist`` silently leaves out the groups it cannot read (an
    LDAP or sssd outage), so a user the list would exempt is only exempt when
    every group named literally in a positive pattern can be looked up and
    does not count them as a member. A group that cannot be looked up raises
    :class:`UserLookupError`. Wildcard patterns cannot be checked this way.
    """
    if settings.requires_duo(group_names(user)):
        return True
    for pattern in settings.groups:
        if pattern.startswith("!") or any(c in pattern for c in "*?["):
            continue
        try:
            entry = grp.getgrnam(pattern)
        except KeyError:
            raise UserLookupError(f"group {pattern!r} of users.groups cannot be looked up (no such group, or the "
                                  f"group database cannot be read): cannot tell whether {user.name!r} must use Duo") from None
        except (OSError, UnicodeError) as exc:
            raise UserLookupError(f"cannot look up group {pattern!r}: {exc}") from None
        if entry.gr_gid == user.gid or user.name in entry.gr_mem:
            return True  # the group database says member even though the group list did not
    return False


def second_factor_user(caller_does_duo: bool, target: LocalUser, caller_uid: int) -> LocalUser | None:
    """Who does Duo: under su to root (the host profile's ``caller_does_duo``) it is the calling user
    (duo_unix's rule), else the target."""
    if caller_does_duo and target.uid == 0 and caller_uid != 0:
        return lookup_uid(caller_uid)
    return target


def duo_identity_for(settings: "UsersSettings", person: LocalUser) -> "DuoIdentity | None":
    """Who ``person`` is at Duo (``map_file``, ``user_id=``), or None when ``users.groups`` exempts them.

    The one rule for logins, ``check --user`` and the ``admin`` commands. Raises
    :class:`UserLookupError` when the groups cannot be looked up (never an exemption).
    """
    if settings.groups and not requires_duo(settings, person):
        return None
    return settings.duo_identity(person.name)
