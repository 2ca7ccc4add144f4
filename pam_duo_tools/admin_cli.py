"""``pam-duo-py admin``: break-glass bypass codes, enrollment and a rollout readiness report.

The Admin API keys come from ``admin.toml`` (:mod:`pam_duo_tools.admin_config`); the user
mapping and ``users.groups`` come from the main config, through the same function as logins
(:func:`pam_duo_py.users.duo_identity_for`). Exit status: 0 ok, 1 error (configuration,
unknown user, anyone locked out in ``readiness``), 2 Duo unreachable or refused.
"""
from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable, TextIO

from pam_duo_py import users as users_mod
from .admin_api import STATE_TEXT, AdminApi, DuoDirectory, admin_transport, alias_names, classify, readiness_json
from pam_duo_py.config import Config, DuoIdentity, load_config
from pam_duo_py.errors import ConfigError, DuoError, UserLookupError
from pam_duo_py.text import for_display

EXIT_OK, EXIT_ERROR, EXIT_DUO = 0, 1, 2
MAX_CODES = 10
MAX_USES = 100
MAX_VALID = 30 * 86400
SERVICE = "pam-duo-py admin"
NO_LOGIN_SHELLS = frozenset({"/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false", ""})


class _Failed(Exception):
    """Stop the command with this exit status; the message is already printed."""

    def __init__(self, status: int) -> None:
        self.status = status


def _error(text: str, status: int = EXIT_ERROR) -> _Failed:
    print(f"pam-duo-py admin: {text}", file=sys.stderr)
    return _Failed(status)


def _load(config_path: str, admin_path: str) -> tuple[Config, Any]:
    from .admin_config import load_admin_config

    problems: list[str] = []
    config = settings = None
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        settings = load_admin_config(admin_path)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        _print_problems("Configuration errors", problems)
        raise _Failed(EXIT_ERROR)
    return config, settings


def _print_problems(title: str, problems: Any) -> None:
    print(f"{title} ({len(problems)}):", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)


def _who_is(config: Config, name: str, service: str = SERVICE) -> tuple[str, DuoIdentity, bool]:
    """(local user, Duo identity, exempt) for a local user, by the login path's own rule."""
    from pam_duo_py.engine import Kind
    from pam_duo_py.login import profile
    from pam_duo_py.login import resolve

    who = resolve(config.users, name, profile(service), caller_uid=0)  # as root: the target does Duo
    if who.stop is not None and who.stop.kind is Kind.ERROR:
        raise _error(who.stop.reason)
    if who.person is None:
        raise _error(f"no such local user: {for_display(name, 100)!r}")
    if who.identity is None:
        return who.person.name, config.users.duo_identity(who.person.name), True
    return who.person.name, who.identity, False


def _when(stamp: Any) -> str | None:
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and stamp > 0:
        return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return None


def _user_view(local: str, identity: DuoIdentity, exempt: bool, duo: dict[str, Any],
               bypass_codes: int | None) -> dict[str, Any]:
    state, why = classify(duo)
    clean = lambda value, limit=100: for_display(value, limit) if isinstance(value, str) else None  # noqa: E731
    phones = [{
        "phone_id": clean(p.get("phone_id")), "name": clean(p.get("name")), "number": clean(p.get("number")),
        "platform": clean(p.get("platform")), "type": clean(p.get("type")),
        "activated": p.get("activated") if isinstance(p.get("activated"), bool) else None,
        "capabilities": [clean(c, 40) for c in p.get("capabilities") or [] if isinstance(c, str)],
        "last_seen": clean(p.get("last_seen")),
    } for p in duo.get("phones") or [] if isinstance(p, dict)]
    tokens = [{"token_id": clean(t.get("token_id")), "type": clean(t.get("type")), "serial": clean(t.get("serial"))}
              for t in duo.get("tokens") or [] if isinstance(t, dict)]
    return {
        "user": local, "duo_user": clean(duo.get("username")), "user_id": clean(duo.get("user_id")),
        "mapped_as": str(identity), "exempt": exempt, "status": clean(duo.get("status")),
        "aliases": [clean(a) for a in alias_names(duo)], "phones": phones, "tokens": tokens,
        "last_login": duo.get("last_login") if isinstance(duo.get("last_login"), (int, float)) else None,
        "bypass_codes": bypass_codes, "state": state, "next_login": f"{STATE_TEXT[state]} ({why})",
    }


def cmd_user(config: Config, api: AdminApi, name: str, as_json: bool) -> int:
    local, identity, exempt = _who_is(config, name)
    duo = api.user(identity)
    if duo is None:
        print(f"Duo does not know {for_display(str(identity), 100)!r} (local user {local}): a login would be "
              f"refused or sent to enrollment, depending on the application's new-user policy.", file=sys.stderr)
        return EXIT_ERROR
    codes = None
    if isinstance(duo.get("user_id"), str):
        codes = api.bypass_code_count(duo["user_id"])
    view = _user_view(local, identity, exempt, duo, codes)
    if as_json:
        print(json.dumps(view, indent=2, ensure_ascii=True))
        return EXIT_OK
    out = [f"Local user:  {local}" + ("  (exempt: not in users.groups; Duo is not asked at login)" if exempt else ""),
           f"Duo user:    {view['duo_user']} ({view['user_id']})" + (f", mapped as {view['mapped_as']}"
                                                                   if view["mapped_as"] != view["duo_user"] else ""),
           f"Status:      {view['status']}",
           f"Aliases:     {', '.join(view['aliases']) or '(none)'}",
           f"Last login:  {_when(view['last_login']) or 'never'}",
           "Phones:" + ("" if view["phones"] else "      (none)")]
    for p in view["phones"]:
        label = " ".join(x for x in (p["platform"] or p["name"], p["number"]) if x) or p["phone_id"] or "phone"
        active = {True: "activated", False: "not activated", None: "activation unknown"}[p["activated"]]
        out.append(f"  {label} ({p['phone_id']}): {active}; capabilities: {', '.join(p['capabilities']) or 'none'}")
    out.append("Tokens:" + ("      (none)" if not view["tokens"] else ""))
    for t in view["tokens"]:
        out.append(f"  {t['type']} serial {t['serial']} ({t['token_id']})")
    if codes is not None:
        out.append(f"Bypass codes: {codes} unused")
    out.append(f"Next login:  {view['next_login']}")
    print("\n".join(out))
    return EXIT_OK


def _who_ran() -> str:
    """The account running the command, and the login it came from (the kernel's audit login uid)."""
    import pwd

    def name(uid: int) -> str:
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return str(uid)

    who = name(os.getuid())
    try:
        with open("/proc/self/loginuid", encoding="ascii") as f:
            login = int(f.read().strip())
    except (OSError, ValueError):
        login = -1
    if 0 <= login < 4294967295 and login != os.getuid():
        who += f" (logged in as {name(login)})"
    return who


def _duration_text(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def cmd_bypass_code(config: Config, api: AdminApi, name: str, *, count: int, uses: int, valid: int, yes: bool,
                    out: TextIO, emit: Callable[[dict[str, Any]], None]) -> int:
    if not 1 <= count <= MAX_CODES:
        raise _error(f"--count must be between 1 and {MAX_CODES}")
    if not 1 <= uses <= MAX_USES:
        raise _error(f"--uses must be between 1 and {MAX_USES}")
    if not 60 <= valid <= MAX_VALID:
        raise _error("--valid must be between 1m and 30d")
    if not (yes or out.isatty()):
        raise _error("standard output is not a terminal: bypass codes are printed only to a terminal, so they "
                     "cannot end up in a log or a file by accident; add --yes to print them anyway")
    local, identity, _ = _who_is(config, name)
    duo = api.user(identity)
    if duo is None or not isinstance(duo.get("user_id"), str):
        raise _error(f"Duo does not know {for_display(str(identity), 100)!r} (local user {local}); no codes created")
    state = classify(duo)[0]
    if state in ("disabled", "locked_out"):
        raise _error(f"Duo user {for_display(duo.get('username') or str(identity), 100)!r} is "
                     f"{'disabled' if state == 'disabled' else 'locked out'}: bypass codes would not let them in "
                     f"(re-enable or unlock the user in Duo first); no codes created")
    codes = api.add_bypass_codes(duo["user_id"], count=count, uses=uses, valid_secs=valid)
    duo_name = for_display(duo.get("username") or str(identity), 100)
    until = datetime.fromtimestamp(time.time() + valid, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    summary = (f"{count} bypass code{'s' if count != 1 else ''} for local user {local} (Duo user {duo_name}), "
               f"{uses} use{'s' if uses != 1 else ''} each, valid {_duration_text(valid)}")
    emit(_admin_event("bypass-code", local, duo_name, f"issued {summary} by {_who_ran()}",
                      count=count, uses=uses, valid_secs=valid))
    out.write(f"Created {summary} (until {until}); the user's other codes were kept.\n")
    for code in codes:
        out.write(f"  {code}\n")
    out.write("Shown once: these codes are in no log. Give them to the user over a trusted channel.\n")
    out.flush()
    return EXIT_OK


def _admin_event(action: str, local: str, duo_user: str, reason: str, **extra: Any) -> dict[str, Any]:
    from pam_duo_py.events import event

    return event("admin", user=local, duo_user=duo_user, service=SERVICE, reason=reason, action=action, **extra)


def _valid_email(email: str) -> bool:
    local, at, domain = email.rpartition("@")
    return (bool(at and local and "." in domain) and len(email) <= 254 and email.isprintable()
            and not any(c.isspace() for c in email))


def cmd_enroll(config: Config, api: AdminApi, name: str, email: str,
               emit: Callable[[dict[str, Any]], None]) -> int:
    if not _valid_email(email):
        raise _error(f"not an email address: {for_display(email, 100)!r}")
    local, identity, _ = _who_is(config, name)
    duo = api.user(identity)
    if duo is not None and classify(duo)[0] != "not_enrolled":
        raise _error(f"Duo user {for_display(duo.get('username') or str(identity), 100)!r} (local user {local}) "
                     f"already has a device; nothing sent")
    username = duo.get("username") if duo is not None else identity.username
    if not isinstance(username, str) or not username:
        raise _error(f"local user {local} is mapped to a Duo user id that Duo does not know; "
                     f"enrollment needs a username")
    api.enroll(username, email)
    emit(_admin_event("enroll", local, for_display(username, 100),
                      f"enrollment email sent for local user {local} (Duo user {for_display(username, 100)}) "
                      f"by {_who_ran()}"))
    print(f"Sent Duo's enrollment email for {for_display(username, 100)} to {email}.")
    return EXIT_OK


def local_users_needing_duo(config: Config, service: str) -> list[tuple[str, DuoIdentity]]:
    """Every local account with a login shell that would have to do Duo, with its Duo identity."""
    import pwd

    from pam_duo_py.login import profile

    host = profile(service)
    rows = []
    seen = set()
    for entry in sorted(pwd.getpwall(), key=lambda e: (e.pw_uid, e.pw_name)):
        if entry.pw_name in seen or entry.pw_shell.strip() in NO_LOGIN_SHELLS:
            continue
        seen.add(entry.pw_name)
        if entry.pw_uid == 0 and host.caller_does_duo:
            continue  # su to root: the calling user does Duo, as themselves
        person = users_mod.LocalUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell)
        identity = users_mod.duo_identity_for(config.users, person)
        if identity is not None:
            rows.append((person.name, identity))
    return rows


def cmd_readiness(config: Config, api: AdminApi, service: str, as_json: bool) -> int:
    try:
        local = local_users_needing_duo(config, service)
    except UserLookupError as exc:
        raise _error(str(exc)) from None
    directory = DuoDirectory(api.users() if local else iter(()))
    rows, notes = [], []
    for name, identity in local:
        duo = directory.find(identity)
        state, why = classify(duo)
        duo_user = duo.get("username") if duo is not None and isinstance(duo.get("username"), str) else str(identity)
        rows.append((name, for_display(duo_user, 100), state))
        notes.append(why)
    report = readiness_json(rows)
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=True))
    else:
        header = ("LOCAL USER", "DUO USER", "STATE", "LOCKED OUT")
        table = [(name, duo_user, state, "YES" if locked["locked_out"] else "no")
                 for (name, duo_user, state), locked in zip(rows, report["users"])]
        widths = [max([len(h)] + [len(r[i]) for r in table]) for i, h in enumerate(header)]
        for cells, why in [(header, "WHY")] + list(zip(table, notes)):
            print("  ".join(f"{c:<{w}}" for c, w in zip(cells, widths)) + f"  {why}")
        print(f"Total: {report['total']} local user{'s' if report['total'] != 1 else ''} must do Duo"
              f"{f' (service {service})' if service != SERVICE else ''}; "
              f"{report['locked_out']} would be locked out.")
    return EXIT_ERROR if report["locked_out"] else EXIT_OK


def main(args: Any) -> int:
    """Run one ``admin`` subcommand from parsed arguments."""
    try:
        config, settings = _load(args.config, args.admin_config)
        api = AdminApi(admin_transport(settings))
        try:
            if args.admin_command == "user":
                return cmd_user(config, api, args.name, args.json)
            if args.admin_command == "readiness":
                return cmd_readiness(config, api, args.service or SERVICE, args.json)
            from pam_duo_py.events import EventSink

            emit = EventSink(config.log.audit_file).emit
            if args.admin_command == "bypass-code":
                return cmd_bypass_code(config, api, args.name, count=args.count, uses=args.uses,
                                       valid=int(args.valid), yes=args.yes, out=sys.stdout, emit=emit)
            if args.admin_command == "enroll":
                return cmd_enroll(config, api, args.name, args.email, emit)
            raise _error(f"unknown admin command {args.admin_command!r}")
        finally:
            api.close()
    except _Failed as exc:
        return exc.status
    except DuoError as exc:
        print(f"pam-duo-py admin: Duo Admin API: {for_display(str(exc), 400)}{_permission_hint(exc)}",
              file=sys.stderr)
        return EXIT_DUO


def _permission_hint(exc: DuoError) -> str:
    if getattr(exc, "status", None) == 403:
        return (" (the Admin API application lacks the permission for this: \"Grant read resource\" for user and "
                "readiness, \"Grant write resource\" for bypass codes and enrollment)")
    return ""


def check_admin(path: str) -> int:
    """``check``'s report on admin.toml: keys accepted, and which permissions they carry."""
    from .admin_config import load_admin_config
    from pam_duo_py.errors import DuoRefused

    try:
        settings = load_admin_config(path)
    except ConfigError as exc:
        _print_problems("Admin config errors", exc.problems)
        return EXIT_ERROR
    print(f"Admin config {path}: OK")
    api = AdminApi(admin_transport(settings), page_size=1)
    host = settings.host + (f":{settings.port}" if settings.port else "")
    try:
        try:
            api._call("GET", "/admin/v1/users", {"limit": "1", "offset": "0"})
            read = "granted"
        except DuoRefused as exc:
            if exc.status != 403:
                raise
            read = "NOT granted (40301: no read permission; admin user and admin readiness will fail)"
        try:
            api._call("POST", "/admin/v1/users/enroll", {})  # refused either way: no parameters
            write = "granted"
        except DuoRefused as exc:
            if exc.status == 403:
                write = "not granted (read-only key: no bypass codes or enrollment from this host)"
            elif exc.status == 400:
                write = "granted (this key can create bypass codes for any user in the account)"
            else:
                raise
    except DuoError as exc:
        print(f"Duo Admin API {host}: FAILED: {for_display(str(exc), 400)}", file=sys.stderr)
        return EXIT_DUO
    finally:
        api.close()
    print(f"Duo Admin API {host}: reachable, keys accepted")
    print(f"  read permission:  {read}")
    print(f"  write permission: {write}")
    return EXIT_OK
