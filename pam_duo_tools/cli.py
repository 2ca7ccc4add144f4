"""``pam-duo-py``: the administrator's command line (docs/behaviour.md §10)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Sequence

from pam_duo_py import __version__
from pam_duo_py.paths import DEFAULT_ADMIN_CONFIG
from pam_duo_py.paths import DEFAULT_CONFIG as DEFAULT_PATH

if TYPE_CHECKING:
    from pam_duo_py.config import Config, DuoIdentity
    from pam_duo_py.duo import DuoClient
    from pam_duo_py.replies import Preauth

EXIT_OK, EXIT_CONFIG, EXIT_DUO, EXIT_CLOCK = 0, 1, 2, 3
# Where duo_unix keeps its config: its own default, then Debian's libpam-duo and login-duo.
DUO_UNIX_PATHS = ("/etc/duo/pam_duo.conf", "/etc/duo/login_duo.conf",
                  "/etc/security/pam_duo.conf", "/etc/security/login_duo.conf")
SIMULATOR_MISSING = ("pam-duo-py simulate: the Duo simulator is not installed. It is a test and demo tool and "
                     "is not part of this package; install it with scripts/install.sh --with-simulator, or run it "
                     "from a source checkout: python3 -m pam_duo_sim")
CLOCK_LIMIT = 60.0


class _Command(argparse.ArgumentParser):
    """A subcommand's parser: ``-c`` and ``--admin-config`` are accepted after the subcommand too (they win)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_argument("-c", "--config", default=argparse.SUPPRESS, help=f"config file (default {DEFAULT_PATH})")
        self.add_argument("--admin-config", default=argparse.SUPPRESS, metavar="PATH",
                          help=f"Admin API key file, for admin and check (default {DEFAULT_ADMIN_CONFIG})")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pam-duo-py",
        description="Duo two-factor authentication for Unix logins: administration commands.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-c", "--config", default=DEFAULT_PATH, help=f"config file (default {DEFAULT_PATH})")
    parser.add_argument("--admin-config", default=DEFAULT_ADMIN_CONFIG, metavar="PATH",
                        help=f"Admin API key file, for admin and check (default {DEFAULT_ADMIN_CONFIG})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Command)
    sub.required = True

    check = sub.add_parser("check", help="validate the config, reach Duo, verify the keys and the clock",
                           description="Validate the config and every file it names, call Duo's check endpoint to "
                                       "verify ikey/skey/host, and report the clock offset. With --user, also run "
                                       "preauth for that user and say what would happen (no push is sent). "
                                       "Exit 0 ok, 1 config error, 2 Duo unreachable or keys rejected, "
                                       "3 clock offset too large.")
    check.add_argument("--user", metavar="NAME", help="local user to dry-run preauth for")
    check.add_argument("--offline", action="store_true",
                       help="only the config and the files it names; no network (for configuration "
                            "management's validate= and the broker's ExecReload=). Exit 0 ok, 1 config error")
    _admin_parser(sub)

    # Its options are the simulator's own: "pam-duo-py simulate --help" lists them all.
    sub.add_parser("simulate", help="run the local Duo simulator (a test and demo tool; see simulate --help)",
                   add_help=False)

    broker = sub.add_parser("broker", help="run the privileged broker for pam-duo-login",
                            description="Listen on the broker socket (in the foreground) and run Duo logins for "
                                        "pam-duo-login and the PAM module. SIGHUP reloads the config.")
    broker.add_argument("--socket", help="socket path (default: broker.socket from the config)")

    imp = sub.add_parser("import-duo-unix", help="convert a duo_unix config to this product's TOML",
                         description="Convert a duo_unix INI config (/etc/duo/pam_duo.conf or /etc/duo/login_duo.conf) "
                                     "to this product's TOML config, read the way duo_unix reads it. The TOML goes to "
                                     "stdout (or to DEST); a note for every option that is not carried over, or whose "
                                     "meaning changes, goes to stderr. failmode is always written out (duo_unix "
                                     "defaulted to safe, this product to secure) and TLS verification is never turned "
                                     "off. Exit 0 converted, 1 unreadable or invalid source (or DEST exists).")
    imp.add_argument("src", metavar="SRC", nargs="?",
                     help="the duo_unix config file to read (default: the first that exists of "
                          + ", ".join(DUO_UNIX_PATHS) + ")")
    imp.add_argument("-o", "--output", dest="dest", metavar="DEST",
                     help="write the TOML to DEST instead of stdout; DEST is created mode 0600 and never overwritten")

    audit = sub.add_parser("audit", help="summarise the audit file",
                           description="Summarise the JSON-lines audit file (log.audit_file of the config): logins by "
                                       "outcome (success, failure, failsafe, exempt, preauth_allow, error), per user "
                                       "and per service, with every fail-safe login (let in without a second factor "
                                       "because Duo could not be reached) listed first. Rotated files (FILE.1, "
                                       "FILE.1.gz, ...) are read too. Exit 0, 1 when there is no audit file.")
    audit.add_argument("--since", metavar="DURATION", type=_duration, default="24h",
                       help="how far back to look: a number and a unit s, m, h, d or w, e.g. 30m, 1h, 2d, 1w "
                            "(default 24h)")
    audit.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    audit.add_argument("--file", metavar="PATH",
                       help="the audit file to read (default: log.audit_file of the config; with --file no config "
                            "is needed)")
    metrics = sub.add_parser("metrics", help="print Prometheus metrics (or write them for node_exporter)",
                             description="Prometheus text-format metrics from the audit file (log.audit_file) and the "
                                         "broker: logins by outcome, service and factor, fail-safe and remembered "
                                         "logins, Duo request latency and errors, the clock offset, broker health. "
                                         "Counters are kept in a state file and survive rotation of the audit file. "
                                         "Exit 0, 2 when the textfile cannot be written.")
    metrics.add_argument("--textfile", metavar="DIR",
                         help="write DIR/pam_duo_py.prom atomically for node_exporter's textfile collector "
                              "(Debian: /var/lib/prometheus/node-exporter) instead of printing")
    metrics.add_argument("--state", metavar="FILE", default=None,
                         help="the state file (default /var/lib/pam_duo_py/metrics-state.json)")
    return parser


def _admin_parser(sub: argparse._SubParsersAction) -> None:
    admin = sub.add_parser("admin", help="Duo Admin API: user details, bypass codes, enrollment, readiness",
                           description="Duo Admin API commands, with the keys in the admin config (an [admin] "
                                       "table: ikey, skey or skey_file, host, optional ca_file, proxy, timeout; "
                                       "root, mode 0600). Local users are mapped to Duo users as logins map them "
                                       "(users.map_file, users.groups of the main config). Exit 0 ok, 1 error, "
                                       "2 Duo unreachable or refused.")
    commands = admin.add_subparsers(dest="admin_command", metavar="ADMIN_COMMAND", parser_class=_Command)
    commands.required = True
    user = commands.add_parser("user", help="the Duo user a local user maps to",
                               description="Show the Duo user a local user maps to: status, aliases, phones and "
                                           "tokens with their capabilities, last login, and what the next login "
                                           "would need. Exit 1 when Duo does not know the user. Needs \"Grant "
                                           "read resource\".")
    user.add_argument("name", metavar="NAME", help="local user")
    user.add_argument("--json", action="store_true", help="one JSON object")
    code = commands.add_parser("bypass-code", help="create bypass codes for a user who lost their phone",
                               description="Create Duo bypass codes for a local user's Duo user, keeping the codes "
                                           "the user already has. They are printed once, only to a terminal (use "
                                           "--yes to print them elsewhere), and never logged; the issuance (who, "
                                           "for whom, count, uses, validity) goes to syslog and the audit file. "
                                           "Needs \"Grant write resource\".")
    code.add_argument("name", metavar="NAME", help="local user")
    code.add_argument("--count", type=int, default=1, metavar="K", help="number of codes, 1-10 (default 1)")
    code.add_argument("--uses", type=int, default=1, metavar="N", help="uses per code, 1-100 (default 1)")
    code.add_argument("--valid", type=_duration, default="1h", metavar="DURATION",
                      help="how long the codes stay valid, e.g. 30m, 1h, 2d (default 1h, at most 30d)")
    code.add_argument("--yes", action="store_true", help="print the codes even when stdout is not a terminal")
    enroll = commands.add_parser("enroll", help="send Duo's enrollment email",
                                 description="Send Duo's enrollment email to a local user whose Duo user has no "
                                             "device yet (Duo creates the user when needed). Needs \"Grant write "
                                             "resource\".")
    enroll.add_argument("name", metavar="NAME", help="local user")
    enroll.add_argument("email", metavar="EMAIL", help="where Duo sends the enrollment link")
    ready = commands.add_parser("readiness", help="who would be locked out if Duo were turned on now",
                                description="For every local account with a login shell that would have to do Duo "
                                            "under the main config (users.groups, users.map_file), what its next "
                                            "login would need, from the Admin API (paged; no preauth, so nothing "
                                            "is logged at Duo per user). Exit 1 if anyone would be locked out "
                                            "(not enrolled, unknown to Duo, disabled, locked out). Needs \"Grant "
                                            "read resource\".")
    ready.add_argument("--json", action="store_true",
                       help='print {"users": [{"user", "duo_user", "state", "locked_out"}], "total", "locked_out"}')
    ready.add_argument("--service", metavar="NAME",
                       help="the PAM service to judge for (su and su-l: root is not listed, the caller does Duo)")


def _duration(text: str) -> float:
    from .audit import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _check(config_path: str, user: str | None, offline: bool = False) -> int:
    from pam_duo_py.config import load_config
    from pam_duo_py.errors import ConfigError, DuoError

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"Configuration errors ({len(exc.problems)}):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"Config {config_path}: OK")
    if config.log.audit_file:
        from pam_duo_py import files
        from pam_duo_py.errors import FileRuleError

        try:
            files.check_directories(config.log.audit_file)
        except FileRuleError as exc:
            print(f"Configuration error: {config_path}: log.audit_file: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    if offline:
        return EXIT_OK

    from pam_duo_py.duo import DuoClient

    client = DuoClient(config.duo)
    host = config.duo.host + (f":{config.duo.port}" if config.duo.port else "")
    try:
        client.check()
    except DuoError as exc:
        print(f"Duo {host}: FAILED: {exc}", file=sys.stderr)
        return EXIT_DUO
    print(f"Duo {host}: reachable, keys accepted")
    offset = client.server_time_offset
    status = EXIT_OK
    if offset is None:
        print("Clock: Duo sent no Date header; offset unknown")
    elif abs(offset) > CLOCK_LIMIT:
        print(f"Clock: this machine's clock differs from Duo's by {round(offset):+d} s: too large "
              f"(Duo refuses requests more than a few minutes off); fix NTP", file=sys.stderr)
        status = EXIT_CLOCK
    else:
        print(f"Clock: offset from Duo {round(offset):+d} s (OK; the Date header has 1 s resolution)")

    if user:
        status = _check_user(config, client, user, status)
    client.close()
    return status


def _check_user(config: Config, client: DuoClient, user: str, status: int) -> int:
    """``check --user``: who the login would be for (the login's own rule), and what preauth says."""
    from pam_duo_py.engine import Kind
    from pam_duo_py.errors import DuoError
    from pam_duo_py.login import HostProfile
    from pam_duo_py.login import resolve

    who = resolve(config.users, user, HostProfile(), os.getuid())
    if who.stop is not None and who.stop.kind is Kind.ERROR:
        print(f"User {user}: logins are refused (PAM_SERVICE_ERR): {who.stop.reason}", file=sys.stderr)
        return EXIT_CONFIG
    if who.person is None:
        print(f"User {user}: no such local user", file=sys.stderr)
        return EXIT_CONFIG
    if who.identity is None:
        print(f"User {user}: exempt (not in users.groups); Duo is not asked")
        return status
    try:
        pre = client.preauth(who.identity, ipaddr=None, hostname=None, verified_push=config.auth.verified_push)
    except DuoError as exc:
        print(f"User {user}: preauth FAILED: {exc}", file=sys.stderr)
        return EXIT_DUO
    _print_preauth(config, user, who.person.name, who.identity, pre)
    return status


def _print_preauth(config: Config, user: str, local: str, identity: DuoIdentity, pre: Preauth) -> None:
    from pam_duo_py.answers import build_menu
    from pam_duo_py.text import for_display

    shown = f"Duo user {for_display(str(identity), 100)}"
    pre = pre.replace(status_msg=for_display(pre.status_msg, 300),
                      enroll_portal_url=for_display(pre.enroll_portal_url or "", 500))
    if pre.result == "allow":
        print(f"User {user} ({shown}): allowed without a second factor ({pre.status_msg})")
    elif pre.result == "deny":
        print(f"User {user} ({shown}): denied: {pre.status_msg}")
    elif pre.result == "enroll":
        print(f"User {user} ({shown}): must enroll first: {pre.enroll_portal_url}")
    else:
        print(f"User {user} ({shown}): second factor required; the menu would offer:")
        menu = build_menu(local, pre.devices)
        for number, option in enumerate(menu.options, start=1):
            print(f"  {number}. {option.label}")
        print("  or a passcode")
        default = menu.default()
        mode = "autopush" if config.auth.autopush else "menu"
        print(f"  mode: {mode}; non-interactive logins push to: {default.label if default else 'nothing (no push device)'}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulate"]:
        try:
            from pam_duo_sim.simulator import main as simulate_main
        except ModuleNotFoundError as exc:
            if exc.name not in ("pam_duo_sim", "pam_duo_sim.simulator"):
                raise
            print(SIMULATOR_MISSING, file=sys.stderr)
            return EXIT_CONFIG
        return simulate_main(argv[1:])
    args = _parser().parse_args(argv)
    args.config = os.path.abspath(args.config)  # the file rule needs an absolute path; accept one relative to here
    args.admin_config = os.path.abspath(args.admin_config)
    if args.command == "check":
        if args.offline and args.user:
            print("pam-duo-py check: --user needs the network; it cannot be combined with --offline", file=sys.stderr)
            return EXIT_CONFIG
        status = _check(args.config, args.user, args.offline)
        if not args.offline and os.path.lexists(args.admin_config):
            from .admin_cli import check_admin

            print()
            status = max(status, check_admin(args.admin_config))
        return status
    if args.command == "admin":
        from .admin_cli import main as admin_main

        return admin_main(args)
    if args.command == "broker":
        from pam_duo_py.broker_server import main as broker_main

        return broker_main(args.config, args.socket)
    if args.command == "import-duo-unix":
        from .import_duo_unix import main as import_main

        src = args.src or next((p for p in DUO_UNIX_PATHS if os.path.exists(p)), None)
        if src is None:
            print("pam-duo-py import-duo-unix: no duo_unix config found (looked for "
                  + ", ".join(DUO_UNIX_PATHS) + "); name the file to convert", file=sys.stderr)
            return EXIT_CONFIG
        if not args.src:
            print(f"pam-duo-py import-duo-unix: converting {src}", file=sys.stderr)
        return import_main(src, args.dest)
    if args.command == "metrics":
        from .metrics import STATE_FILE, main as metrics_main

        return metrics_main(args.config, args.textfile, args.state or STATE_FILE)
    if args.command == "audit":
        from .audit import main as audit_main

        return audit_main(args.config, args.since, as_json=args.json, file=args.file)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
