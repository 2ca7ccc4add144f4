"""One login, front to back: local user, groups, Duo identity, the engine, the log.

Shared by the PAM module and the broker; each supplies its own prompter and the
request's :class:`HostProfile`. :func:`resolve` (who the login is for) also serves
``pam-duo-py check --user`` and the admin commands. This module imports the engine, the
config and the Duo client only when a login is decided here (:class:`InProcess`,
:func:`authenticate`); a login through the broker never imports it (the PAM module
describes such a login as the broker's login frame, see :mod:`pam_duo_py.pam`).
"""
from __future__ import annotations

from . import hosts
from .record import Record
from .result import Result

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only
    from typing import Callable

    from .config import Config, DuoIdentity, DuoSettings, UsersSettings
    from .engine import Outcome, Prompter
    from .events import EventSink
    from .users import LocalUser


class HostProfile(Record):
    """What the host program changes about one login (the rules are in :mod:`pam_duo_py.hosts`)."""

    holds_info_messages: bool = False  # sshd: PAM info messages wait for the next prompt
    caller_does_duo: bool = False  # su: to root the caller does Duo; remembered logins are per calling uid
    command: str | None = None  # the command being authorised, for pushinfo (sudo's; pam-duo-login's)


def profile(service: str, command: str | None = None) -> HostProfile:
    """The profile of the host program behind ``service``; ``command`` as the front end found it."""
    return HostProfile(holds_info_messages=hosts.holds_info_messages(service),
                       caller_does_duo=hosts.caller_does_duo(service), command=command)


class LoginRequest(Record, hidden=("password", "env_passcode",)):
    """What the front end knows about a login attempt."""

    user: str
    service: str
    rhost: str | None = None
    tty: str | None = None
    interactive: bool | None = None  # None: interactive when there is a tty
    host: HostProfile | None = None  # None: the profile of ``service``, with no command
    caller_uid: int = 0
    trusted_address: bool = True  # False: rhost is only what an unprivileged client claims
    password: str | None = None
    env_passcode: str | None = None


def pam_request(login: dict) -> LoginRequest:
    """The PAM module's description of a login (:func:`pam_duo_py.pam.pam_login`, keyed as the
    broker's login frame) as the request it decides in-process."""
    return LoginRequest(user=login["user"], service=login["service"], rhost=login["rhost"], tty=login["tty"],
                        host=profile(login["service"], login["command"]), password=login["password"],
                        caller_uid=login["caller_uid"])


def ip_literal(rhost: str | None) -> str | None:
    """PAM_RHOST as an IP address, or None (host names are never sent to Duo as an address)."""
    if not rhost:
        return None
    import ipaddress  # here: local logins (su, sudo) have no PAM_RHOST and skip the import

    candidate = rhost.strip()
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
    try:
        return str(ipaddress.ip_address(candidate.split("%", 1)[0]))
    except ValueError:
        return None


def _default_duo(settings: DuoSettings):  # type: ignore[no-untyped-def]
    from .duo import DuoClient

    return DuoClient(settings)


class Resolved(Record):
    """Who a login is for: the local user who does Duo and their Duo identity, or why it stops before Duo."""

    person: LocalUser | None = None  # None: no such local user (or the lookup failed)
    identity: DuoIdentity | None = None  # None: the login stops here (``stop``)
    stop: Outcome | None = None  # unknown user, exempt, or a user or group lookup that failed


def resolve(settings: UsersSettings, user: str, host: HostProfile, caller_uid: int) -> Resolved:
    """The local user, the su rule, the exemption by ``users.groups`` and the Duo identity, for a login
    and for ``check --user``. A lookup that fails is never an exemption."""
    from . import users
    from .engine import Kind, Outcome
    from .errors import UserLookupError

    try:
        target = users.lookup(user)
        person = users.second_factor_user(host.caller_does_duo, target, caller_uid) if target else None
    except UserLookupError as exc:
        return Resolved(stop=Outcome(Result.SERVICE_ERR, Kind.ERROR, str(exc)))
    if person is None:
        return Resolved(stop=Outcome(Result.USER_UNKNOWN, Kind.FAILURE, "unknown local user"))
    try:
        identity = users.duo_identity_for(settings, person)
    except UserLookupError as exc:
        return Resolved(person, stop=Outcome(Result.SERVICE_ERR, Kind.ERROR, str(exc)))
    if identity is None:
        return Resolved(person, stop=Outcome(Result.IGNORE, Kind.EXEMPT, "not in users.groups"))
    return Resolved(person, identity)


def authenticate(config: Config, request: LoginRequest, ui: Prompter, *, sink: EventSink,
                 duo_factory: Callable = _default_duo, hostname: str | None = None) -> Outcome:
    """Decide one login and log the decision. Never raises for expected failures."""
    from .engine import Engine, Login
    from .events import CLAIMED, event

    shown_rhost = request.rhost if request.trusted_address or not request.rhost else request.rhost + CLAIMED
    host = request.host or profile(request.service)
    base = {"user": request.user, "service": request.service, "rhost": shown_rhost, "tty": request.tty}
    who = resolve(config.users, request.user, host, request.caller_uid)
    if who.person is not None:
        base["user"] = who.person.name
    if who.stop is not None:
        sink.emit(event(who.stop.kind.value, reason=who.stop.reason, **base))
        return who.stop
    login = Login(
        user=who.person.name,
        identity=who.identity,
        service=request.service,
        interactive=bool(request.tty) if request.interactive is None else request.interactive,
        rhost=shown_rhost,
        ipaddr=ip_literal(request.rhost) if request.trusted_address else None,
        tty=request.tty,
        hostname=hostname or _hostname(),
        command=host.command,
        holds_info_messages=host.holds_info_messages,
        password=request.password,
        env_passcode=request.env_passcode,
    )
    duo = duo_factory(config.duo)
    try:
        outcome = Engine(config.auth, duo, ui, **_stores(config, host, request.caller_uid, sink)).run(login)
    finally:
        facts = _duo_facts(duo)  # before close(): a pooled client goes back to serve other logins
        duo.close()
    sink.emit(event(outcome.kind.value, duo_user=str(who.identity), factor=outcome.factor, txid=outcome.txid,
                    reason=outcome.reason, duo_status=outcome.duo_status, **facts, **base))
    return outcome


def _stores(config: Config, host: HostProfile, caller_uid: int, sink: EventSink) -> dict:
    """The remembered logins and preferred devices the config asks for, as the engine's keywords."""
    stores: dict = {}
    if config.remember.seconds > 0 or config.auth.preferred_device:
        from .state import PreferredDevices, Remember

        if config.remember.seconds > 0:
            stores["remember"] = Remember(config.remember.state_dir, config.remember.seconds,
                                          config.remember.services_without_address, on_problem=sink.error,
                                          per_caller=host.caller_does_duo, caller_uid=caller_uid)
        if config.auth.preferred_device:
            stores["devices"] = PreferredDevices(config.remember.state_dir, on_problem=sink.error)
    return stores


def _hostname() -> str:
    import socket

    return socket.gethostname()


class InProcess:
    """The login decided in this process, with the config at ``config_path`` (loaded once, when first needed).

    ``duo_factory`` makes the Duo client from the config's ``[duo]`` (tests pass a fake).
    """

    def __init__(self, config_path: str, *, debug: bool = False, duo_factory: Callable = _default_duo) -> None:
        self.config_path = config_path
        self.debug = debug
        self.duo_factory = duo_factory
        self._config: Config | None = None
        self._loaded = False

    def config(self) -> Config | None:
        """The config; None when it does not load (each problem is logged, once)."""
        if not self._loaded:
            self._loaded = True
            from .config import load_config
            from .errors import ConfigError

            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                from .events import EventSink

                for problem in exc.problems:
                    EventSink(debug=self.debug).config_error(problem)
        return self._config

    def authenticate(self, login: dict, ui: Prompter) -> Result:
        """Decide the login the PAM module describes (:func:`pam_request`)."""
        config = self.config()
        if config is None:
            return Result.SERVICE_ERR
        from .events import EventSink

        sink = EventSink(config.log.audit_file, debug=self.debug)
        return authenticate(config, pam_request(login), ui, sink=sink, duo_factory=self.duo_factory).result


def _duo_facts(duo: object) -> dict:
    """What the Duo client measured during this login, for the metrics: the calls and the clock offset."""
    take = getattr(duo, "take_calls", None)
    calls = take() if callable(take) else None
    if not isinstance(calls, list) or not calls:
        return {}
    facts: dict = {"duo_calls": [[endpoint, round(seconds, 4), kind] for endpoint, seconds, kind in calls]}
    offset = getattr(duo, "server_time_offset", None)
    if isinstance(offset, (int, float)) and not isinstance(offset, bool):
        facts["clock_offset"] = round(offset, 3)
    return facts
