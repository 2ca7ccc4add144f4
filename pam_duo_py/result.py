"""The one result of a login, shared by the PAM module, ``pam-duo-login``, the broker and the engine.

The PAM names map to ``pamh.PAM_<name>``. The broker's own answers are values
too, never message text: a client decides on them, and only a PAM name ever
reaches PAM (:attr:`Result.pam_name`). On the broker's wire a result travels as
its name (docs in :mod:`pam_duo_py.broker_protocol`).

A ``str`` enumeration, ``Result.SUCCESS == "SUCCESS"``, that serialises as its name. It is
written out rather than an ``enum.Enum``: the ``enum`` module and what it imports
(``functools``, ``collections``, ``operator``, ``reprlib``...) cost every login through the
broker about 4 ms, and this module is all such a login needs of it. Members are
singletons (compare with ``is``), ``Result(name)`` looks one up (``ValueError`` for
anything else), and ``name``, ``value``, ``str()`` and ``repr()`` read as an enum's do.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterator


class _ResultType(type):
    def __iter__(cls) -> "Iterator[Result]":
        return iter(cls._members.values())  # type: ignore[attr-defined]

    def __len__(cls) -> int:
        return len(cls._members)  # type: ignore[attr-defined]


class Result(str, metaclass=_ResultType):
    __slots__ = ()
    _members: "dict[str, Result]" = {}

    SUCCESS: "Result"
    AUTH_ERR: "Result"
    MAXTRIES: "Result"
    IGNORE: "Result"
    USER_UNKNOWN: "Result"
    CONV_ERR: "Result"
    AUTHINFO_UNAVAIL: "Result"
    SERVICE_ERR: "Result"
    # The broker's own answers. Nothing was sent to Duo for any of them.
    BUSY: "Result"  # too many concurrent logins for this user: the PAM module decides in-process
    OTHER_CONFIG: "Result"  # the broker serves another config: the PAM module decides in-process
    BAD_CONFIG: "Result"  # the broker's config no longer loads: refused, as SERVICE_ERR
    NOT_ACCEPTED: "Result"  # never on the wire: no broker, no answer in time, or it hung up first

    def __new__(cls, name: object) -> "Result":
        member = cls._members.get(name) if isinstance(name, str) else None
        if member is None:
            raise ValueError(f"{name!r} is not a valid Result")
        return member

    def __reduce__(self) -> tuple:
        return Result, (self.value,)

    @property
    def name(self) -> str:
        return str.__str__(self)

    @property
    def value(self) -> str:
        return str.__str__(self)

    def __str__(self) -> str:
        return f"Result.{self.value}"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __repr__(self) -> str:
        return f"<Result.{self.value}: {self.value!r}>"

    @property
    def declined(self) -> bool:
        """The broker did not take the login and nothing went to Duo: the PAM module decides it in-process."""
        return self in _DECLINED

    @property
    def pam_name(self) -> str:
        """The PAM result name for ``pamh.PAM_<name>``: the broker's own answers are a service error."""
        return self.value if self.value in _PAM_NAMES else "SERVICE_ERR"

    @classmethod
    def from_wire(cls, name: object) -> "Result | None":
        """The result a peer named, or None for anything that is not one."""
        try:
            result = cls(name) if isinstance(name, str) else None
        except ValueError:
            return None
        return None if result is Result.NOT_ACCEPTED else result


_PAM_NAMES = ("SUCCESS", "AUTH_ERR", "MAXTRIES", "IGNORE", "USER_UNKNOWN", "CONV_ERR", "AUTHINFO_UNAVAIL",
              "SERVICE_ERR")
for _name in (*_PAM_NAMES, "BUSY", "OTHER_CONFIG", "BAD_CONFIG", "NOT_ACCEPTED"):
    Result._members[_name] = str.__new__(Result, _name)
    setattr(Result, _name, Result._members[_name])
del _name
_DECLINED = frozenset((Result.BUSY, Result.OTHER_CONFIG, Result.NOT_ACCEPTED))
