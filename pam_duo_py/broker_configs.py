"""The config files the broker serves, each with what its logins share.

The broker serves its own config file (the *default*: the one it was started
with, and the only one ``pam-duo-login`` and every other non-root caller gets)
and, for root callers (the PAM module) whose PAM line names another file with
``conf=``, that one too. Each served file keeps its config as loaded, the
identity of every file it read (:mod:`pam_duo_py.watch`), its own warm Duo
clients and its own event sink (audit file). Before each login the identities
are compared with the disk and the file is loaded again on a change, so a
login is always decided with the config on disk, as in-process.

Another file is loaded on first use, under the same file rule as in-process
(:mod:`pam_duo_py.files`), and kept under its absolute path. Bounds and
failures, none of which touches another file's logins:

* at most :data:`MAX_CONFIGS` files, the default included; a login naming one
  more is declined (``OTHER_CONFIG``: the PAM module decides it in-process);
* a file the broker cannot see (a relative path, or missing in its view, as
  under a service manager's sandbox) is declined the same way;
* a file that exists but does not load is refused for its own logins
  (``BAD_CONFIG``, the problems in the system log) and takes no place: the
  next login naming it tries again;
* a served file that no longer loads refuses its own logins until the disk
  holds a valid one again; for the default, that is what the broker always did.
"""
from __future__ import annotations

import os
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

from . import watch
from .result import Result

MAX_CONFIGS = 8
_NOTHING = {("file", ""): ()}  # stamps that match no disk: the next login loads again


class Served:
    """One config file as the broker serves it: config, file identities, Duo client pool, event sink."""

    def __init__(self, path: str, config: Any, stamps: dict, make_pool: Callable[[Any], Any]) -> None:
        from .events import EventSink

        self.path = path
        self.config = config
        self.stamps = stamps
        self._make_pool = make_pool
        self.pool = make_pool(config.duo)
        self.sink = EventSink(config.log.audit_file)
        self.lock = threading.Lock()

    def reload(self) -> str | None:
        """Load the file again (call with :attr:`lock` held); the problems when it does not load, else None.

        Warm Duo connections are kept unless the Duo settings or the CA file changed.
        """
        from .events import EventSink

        try:
            config, stamps = watch.load(self.path)
        except Exception as exc:  # ConfigError or anything else: never take the broker down
            self.stamps = _NOTHING
            return "; ".join(getattr(exc, "problems", ())) or f"{type(exc).__name__}: {exc}"
        ca = ("file", config.duo.ca_file)
        renew = config.duo != self.config.duo or stamps.get(ca) != self.stamps.get(ca)
        self.config, self.stamps = config, stamps
        self.sink = EventSink(config.log.audit_file)
        if renew:
            pool, self.pool = self.pool, self._make_pool(config.duo)
            pool.close()
        return None


class ServedConfigs:
    """The default config file and the others root callers named, at most ``limit`` in all.

    ``report(served, why, problems)`` is told of every reload (``problems`` None when it worked).
    """

    def __init__(self, default_path: str, make_pool: Callable[[Any], Any],
                 report: Callable[[Served, str, str | None], None], *, limit: int = MAX_CONFIGS) -> None:
        config, stamps = watch.load(default_path)  # a ConfigError here: the broker does not start
        self.default = Served(default_path, config, stamps, make_pool)
        self._make_pool = make_pool
        self._report = report
        self.limit = limit
        self._others: dict[str, Served] = {}
        self._lock = threading.Lock()

    def all(self) -> list[Served]:
        with self._lock:
            return [self.default, *self._others.values()]

    def for_login(self, wanted: str | None) -> Served | Result:
        """The served file a login naming ``wanted`` (None: the default) is decided with, or why not."""
        if not wanted or os.path.realpath(wanted) == os.path.realpath(self.default.path):
            return self.default
        if not os.path.isabs(wanted):
            return Result.OTHER_CONFIG
        path = os.path.normpath(wanted)
        with self._lock:
            served = self._others.get(path)
            if served is not None:
                return served
            if 1 + len(self._others) >= self.limit or not os.path.lexists(path):
                return Result.OTHER_CONFIG
            try:
                config, stamps = watch.load(path)
            except Exception as exc:  # ConfigError or anything else: this file's login only
                problems = "; ".join(getattr(exc, "problems", ())) or f"{type(exc).__name__}: {exc}"
                self.default.sink.error(f"broker: config {path} does not load; its logins are refused: {problems}")
                return Result.BAD_CONFIG
            served = self._others[path] = Served(path, config, stamps, self._make_pool)
        self._report(served, "first use", None)
        return served

    def current(self, served: Served) -> Any:
        """``served``'s config as it is on disk now, loaded again when a file changed; None when it does not load."""
        with served.lock:
            if watch.changed(served.stamps):
                problems = served.reload()
                self._report(served, "changed on disk", problems)
                if problems is not None:
                    return None
            return served.config

    def reload_all(self) -> bool:
        """Load every served file again (SIGHUP); False when one of them does not load."""
        ok = True
        for served in self.all():
            with served.lock:
                problems = served.reload()
            self._report(served, "SIGHUP", problems)
            ok = ok and problems is None
        return ok

    def close(self) -> None:
        for served in self.all():
            served.pool.close()
