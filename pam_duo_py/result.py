"""The one result of a login, shared by the PAM module, ``pam-duo-login``, the broker and the engine.

The PAM names map to ``pamh.PAM_<name>``. The broker's own answers are values
too, never message text: a client decides on them, and only a PAM name ever
reaches PAM (:attr:`Result.pam_name`). On the broker's wire a result travels as
its name (docs in :mod:`pam_duo_py.broker_protocol`).

A ``str`` enum: ``Result.SUCCESS == "SUCCESS"``, and it serialises as its name.
"""
from __future__ import annotations

import enum


class Result(str, enum.Enum):
    SUCCESS = "SUCCESS"
    AUTH_ERR = "AUTH_ERR"
    MAXTRIES = "MAXTRIES"
    IGNORE = "IGNORE"
    USER_UNKNOWN = "USER_UNKNOWN"
    CONV_ERR = "CONV_ERR"
    AUTHINFO_UNAVAIL = "AUTHINFO_UNAVAIL"
    SERVICE_ERR = "SERVICE_ERR"
    # The broker's own answers. Nothing was sent to Duo for any of them.
    BUSY = "BUSY"  # too many concurrent logins for this user: the PAM module decides in-process
    OTHER_CONFIG = "OTHER_CONFIG"  # the broker serves another config: the PAM module decides in-process
    BAD_CONFIG = "BAD_CONFIG"  # the broker's config no longer loads: refused, as SERVICE_ERR
    NOT_ACCEPTED = "NOT_ACCEPTED"  # never on the wire: no broker, no answer in time, or it hung up first

    @property
    def declined(self) -> bool:
        """The broker did not take the login and nothing went to Duo: the PAM module decides it in-process."""
        return self in _DECLINED

    @property
    def pam_name(self) -> str:
        """The PAM result name for ``pamh.PAM_<name>``: the broker's own answers are a service error."""
        return self.value if self.value in _PAM_NAMES else "SERVICE_ERR"

    @classmethod
    def from_wire(cls, name: object) -> Result | None:
        """The result a peer named, or None for anything that is not one."""
        try:
            result = cls(name) if isinstance(name, str) else None
        except ValueError:
            return None
        return None if result is Result.NOT_ACCEPTED else result


_PAM_NAMES = frozenset(("SUCCESS", "AUTH_ERR", "MAXTRIES", "IGNORE", "USER_UNKNOWN", "CONV_ERR",
                        "AUTHINFO_UNAVAIL", "SERVICE_ERR"))
_DECLINED = frozenset((Result.BUSY, Result.OTHER_CONFIG, Result.NOT_ACCEPTED))
