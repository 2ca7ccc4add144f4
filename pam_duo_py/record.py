"""Small value objects without ``dataclasses``.

``dataclasses`` builds every class by generating and compiling source code and
imports ``inspect`` to do it: about 10 ms per login inside pam_python, where
the interpreter starts afresh for every PAM handle. :class:`Record` gives the
same shape (fields from annotations, defaults from class attributes, frozen,
equality, a repr that hides secret fields) for a fraction of that.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class FrozenError(AttributeError):
    """Assignment to a field of a frozen record."""


class Record:
    """Base class: ``class Point(Record): x: int; y: int = 0``.

    Subclass keywords: ``frozen=False`` allows assignment; ``hidden=("password",)``
    keeps fields out of ``repr()``.
    """

    _fields: tuple[str, ...] = ()
    _hidden: frozenset[str] = frozenset()
    _frozen: bool = True

    def __init_subclass__(cls, *, frozen: bool = True, hidden: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names: list[str] = list(cls._fields)
        for name in cls.__dict__.get("__annotations__", {}):
            if not name.startswith("_") and name not in names:
                names.append(name)
        cls._fields = tuple(names)
        cls._hidden = cls._hidden | frozenset(hidden)
        cls._frozen = frozen

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fields = self._fields
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__} takes at most {len(fields)} positional arguments")
        values = dict(zip(fields, args))
        for name, value in kwargs.items():
            if name not in fields:
                raise TypeError(f"{type(self).__name__} has no field {name!r}")
            if name in values:
                raise TypeError(f"{type(self).__name__} got {name!r} twice")
            values[name] = value
        cls = type(self)
        for name in fields:
            if name in values:
                value = values[name]
            elif name in cls.__dict__ or any(name in base.__dict__ for base in cls.__mro__[1:]):
                value = getattr(cls, name)
            else:
                raise TypeError(f"{cls.__name__} needs {name!r}")
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if self._frozen:
            raise FrozenError(f"{type(self).__name__} is frozen")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise FrozenError(f"{type(self).__name__} fields cannot be deleted")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        if not self._frozen:
            raise TypeError(f"unhashable type: {type(self).__name__}")
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields if name not in self._hidden)
        return f"{type(self).__name__}({shown})"

    def replace(self, **changes: Any) -> Any:
        values = {name: getattr(self, name) for name in self._fields}
        values.update(changes)
        return type(self)(**values)
