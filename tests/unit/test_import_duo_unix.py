"""``pam-duo-py import-duo-unix``: duo_unix INI configs converted to our TOML."""
from __future__ import annotations

import os
import pathlib
import re
import stat
import sys
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pam_duo_tools import cli  # noqa: E402
from pam_duo_py.config import UsersSettings, parse_config  # noqa: E402
from pam_duo_py.errors import ConfigError  # noqa: E402
from pam_duo_tools.import_duo_unix import ConversionError, convert, translate_groups  # noqa: E402

DATA = pathlib.Path(__file__).resolve().parent / "data" / "duo_unix"
SAMPLES = sorted(p.name for p in DATA.glob("*.conf"))
SKEY = "Zh5eGmUq9zpfQnyUIu5OL9iHoMMv5ajjyPfvqEUs"
IKEY = "DIWJ8X6AEYOR5OMC6TQ1"
HOST = "api-6ab2c5f1.duosecurity.com"
HEAD = f"[duo]\nikey = {IKEY}\nskey = {SKEY}\nhost = {HOST}\nfailmode = secure\n"
SECTIONS = ("duo", "auth", "users", "log", "broker")

# Samples duo_unix itself refuses to read: no TOML, an error naming the file and line.
INVALID = {"pam_duo_broken_syntax.conf": 5, "pam_duo_unknown_option.conf": 5}
# Samples that convert but whose source lacks valid keys, or whose groups must be fixed by hand:
# the converted config reports exactly these problems and nothing else.
EXPECTED_CONFIG_PROBLEMS = {
    "pam_duo_missing_skey.conf": ["duo.skey"],
    "pam_duo_groups_all_negated.conf": ["users.groups"],
}


def read_stub(path: str, secret: bool) -> bytes:
    return b"-----BEGIN CERTIFICATE-----\n"


def sample(name: str) -> str:
    return (DATA / name).read_bytes().decode("utf-8")


def conv(name: str):
    return convert(sample(name), f"/etc/duo/{name}")


def toml(result) -> dict:
    return tomllib.loads(result.toml_text)


def notes_text(result) -> str:
    return "\n".join(result.notes)


def note_about(result, *words: str) -> str:
    hits = [n for n in result.notes if all(w in n for w in words)]
    assert hits, f"no note with {words}: {result.notes}"
    return hits[0]


# --------------------------------------------------------------------------------------------
# Every sample


def test_there_are_enough_samples():
    assert len(SAMPLES) >= 13
    assert b"\r\n" in (DATA / "pam_duo_crlf.conf").read_bytes()


@pytest.mark.parametrize("name", SAMPLES)
def test_every_sample_converts_to_toml_our_parser_accepts(name):
    if name in INVALID:
        with pytest.raises(ConversionError) as info:
            conv(name)
        assert f"/etc/duo/{name}, line {INVALID[name]}:" in str(info.value)
        return
    result = conv(name)
    assert result.toml_text.startswith("# ")
    assert f"/etc/duo/{name}" in result.toml_text.splitlines()[0]
    data = toml(result)
    assert list(data) == list(SECTIONS)
    assert data["auth"]["failmode"] in ("secure", "safe")
    assert data["duo"].get("ca_file", "") == "" or data["duo"]["ca_file"].startswith("/")
    expected = EXPECTED_CONFIG_PROBLEMS.get(name)
    if expected is None:
        config = parse_config(result.toml_text, "/etc/pam_duo_py/pam_duo.toml", read=read_stub)
        assert config.duo.ikey == IKEY and config.duo.skey == SKEY and config.duo.host == HOST
        assert result.config_problems == []
    else:
        with pytest.raises(ConfigError) as info:
            parse_config(result.toml_text, "/etc/pam_duo_py/pam_duo.toml", read=read_stub)
        keys = [p.split(": ")[1] for p in info.value.problems]
        assert keys == expected
        assert len(result.config_problems) == len(expected)


@pytest.mark.parametrize("name", SAMPLES)
def test_the_secret_key_never_appears_in_notes_or_errors(name):
    try:
        result = conv(name)
    except ConversionError as exc:
        assert SKEY not in str(exc)
        return
    assert SKEY not in notes_text(result)
    comments = "\n".join(line for line in result.toml_text.splitlines() if line.lstrip().startswith("#"))
    assert SKEY not in comments


@pytest.mark.parametrize("name", SAMPLES)
def test_cli_never_prints_the_secret_key_on_stderr(name, tmp_path, capsys):
    src = tmp_path / name
    src.write_bytes((DATA / name).read_bytes())
    src.chmod(0o600)
    code = cli.main(["import-duo-unix", str(src)])
    captured = capsys.readouterr()
    assert SKEY not in captured.err
    assert code == (1 if name in INVALID else 0)
    if name in INVALID:
        assert captured.out == ""


# --------------------------------------------------------------------------------------------
# The samples, one by one


def test_minimal_gets_failmode_secure_with_a_warning_and_our_defaults():
    result = conv("pam_duo_minimal.conf")
    data = toml(result)
    assert data["auth"]["failmode"] == "secure"
    note = note_about(result, "failmode")
    assert '"safe"' in note and "fail open" in note and '"secure"' in note
    assert result.notes[0] == note                      # the most important note comes first
    assert data["duo"] == {"ikey": IKEY, "skey": SKEY, "host": HOST, "ca_file": "", "proxy": "", "timeout": 10}
    assert data["auth"] == {"failmode": "secure", "autopush": False, "prompts": 3, "push_timeout": 75, "pushinfo": True,
                            "pushinfo_command": False, "verified_push": False, "accept_env_factor": False}
    assert data["users"] == {"groups": [], "map_file": ""}
    assert data["log"] == {"audit_file": ""}
    assert data["broker"] == {"socket": "/run/pam_duo_py/broker.sock"}
    note_about(result, "https_timeout", "duo.timeout = 10")


def test_full_sample():
    result = conv("pam_duo_full.conf")
    data = toml(result)
    assert data["duo"]["ca_file"] == "/etc/duo/ca-bundle.pem"
    assert data["duo"]["proxy"] == "http://proxy.corp.example:3128"
    assert data["duo"]["timeout"] == 30
    assert data["auth"]["failmode"] == "safe"
    assert data["auth"]["autopush"] is True
    assert data["auth"]["prompts"] == 1
    assert data["auth"]["pushinfo"] is True and data["auth"]["pushinfo_command"] is True
    assert data["auth"]["accept_env_factor"] is False
    assert data["users"]["groups"] == ["*", "!duo-bypass"]
    note = note_about(result, "failmode = safe")
    assert "kept" in note and "Failsafe" in note
    assert "same users" in note_about(result, "users.groups")
    note_about(result, "fallback_local_ip", "not carried")
    note_about(result, "send_gecos", "not carried", "map_file")
    note_about(result, "dev_fips_mode", "not carried")
    config = parse_config(result.toml_text, "x", read=read_stub)
    assert config.users.requires_duo(["staff"]) and not config.users.requires_duo(["staff", "duo-bypass"])


def test_failmode_secure_is_kept_without_a_warning():
    result = conv("pam_duo_failmode_secure.conf")
    data = toml(result)
    assert data["auth"]["failmode"] == "secure"
    assert not [n for n in result.notes if n.startswith("failmode") or "failmode = safe" in n]
    assert data["auth"]["pushinfo_command"] is True        # "yes ; send the command too": inline comment


def test_groups_with_negation_are_translated_exactly():
    result = conv("pam_duo_groups_negation.conf")
    assert toml(result)["users"]["groups"] == ["admin", "dev*", "!robots"]
    note = note_about(result, "users.groups")
    assert "same users" in note and "combined" in note and "PAM_IGNORE" in note


def test_all_negated_groups_are_kept_as_an_error_not_turned_into_star():
    result = conv("pam_duo_groups_all_negated.conf")
    assert toml(result)["users"]["groups"] == ["!wheel"]
    note = note_about(result, "every pattern is negated")
    assert "NOBODY" in note and 'Adding "*" would not reproduce' in note and "kept as written" in note
    assert '["*", "!wheel"]' in note


def test_proxy_and_timeout():
    result = conv("pam_duo_proxy_timeout.conf")
    data = toml(result)
    assert data["duo"]["proxy"] == "http://duo:s3cretPa55@squid.example.net:80"
    assert data["duo"]["timeout"] == 10
    assert "s3cretPa55" not in notes_text(result) and "duo:" not in notes_text(result)
    note_about(result, "http_proxy", "port 80")
    note_about(result, "https_timeout", "no timeout", "duo.timeout = 10")
    config = parse_config(result.toml_text, "x", read=read_stub)
    assert (config.duo.proxy.host, config.duo.proxy.port, config.duo.proxy.user) == ("squid.example.net", 80, "duo")


@pytest.mark.parametrize("name, option", [("pam_duo_noverify.conf", "noverify"), ("pam_duo_empty_cafile.conf", "cafile")])
def test_verification_is_never_turned_off(name, option):
    result = conv(name)
    data = toml(result)
    assert data["duo"]["ca_file"] == ""
    assert set(data["duo"]) == {"ikey", "skey", "host", "ca_file", "proxy", "timeout"}
    note = note_about(result, option, "verification cannot be turned off")
    assert "not carried" in note.lower()


def test_noverify_with_failmode_safe_says_what_a_verification_failure_means():
    note = note_about(conv("pam_duo_noverify.conf"), "noverify")
    assert "failmode safe" in note and "ca_file" in note


def test_noverify_keeps_a_given_cafile():
    result = convert(HEAD + "noverify = yes\ncafile = /etc/duo/corp-ca.pem\n", "/etc/duo/pam_duo.conf")
    assert toml(result)["duo"]["ca_file"] == "/etc/duo/corp-ca.pem"
    assert "ignored while noverify" in note_about(result, "noverify")


def test_gecos_options_are_not_carried_and_map_file_is_suggested():
    result = conv("login_duo_gecos.conf")
    note = note_about(result, "gecos_username_pos", "not carried")
    assert "chfn" in note and "users.map_file" in note
    assert "gecos" not in result.toml_text.split("[duo]", 1)[1].lower()


def test_motd_and_fallback_local_ip_are_not_carried_with_reasons():
    result = conv("login_duo_motd_fallback.conf")
    assert "motd" in note_about(result, "motd", "not carried")
    assert "never send this server's address as the client's" in note_about(result, "fallback_local_ip")
    assert toml(result)["auth"]["accept_env_factor"] is True


def test_broken_syntax_line_is_an_error_naming_file_and_line():
    with pytest.raises(ConversionError) as info:
        convert(sample("pam_duo_broken_syntax.conf"), "/etc/duo/pam_duo.conf")
    message = str(info.value)
    assert "/etc/duo/pam_duo.conf, line 5:" in message
    assert "failmode on line 6" in message and "failmode safe" in message
    assert "q3598pjg9jajaf" not in message          # a broken line might hold a secret: never quoted


def test_missing_skey_converts_with_a_note_and_fails_closed():
    result = conv("pam_duo_missing_skey.conf")
    data = toml(result)
    assert "skey" not in data["duo"]
    note = note_about(result, "skey", "Missing host, ikey, or skey")
    assert "failmode safe" in note and "every user in" in note
    assert any("duo.skey" in p for p in result.config_problems)


def test_duplicate_keys_follow_duo_unix():
    result = conv("pam_duo_duplicate_keys.conf")
    data = toml(result)
    assert data["duo"]["ikey"] == IKEY                  # the last one wins
    assert data["auth"]["failmode"] == "secure"         # the last one wins
    assert data["auth"]["prompts"] == 2                 # the lowest wins
    assert data["users"]["groups"] == ["admin", "ops"]  # accumulated
    note_about(result, "ikey", "more than once", "line 9")
    note_about(result, "prompts", "lowest")


def test_crlf_line_endings():
    result = conv("pam_duo_crlf.conf")
    data = toml(result)
    assert data["duo"]["host"] == HOST and data["duo"]["skey"] == SKEY
    assert data["auth"]["autopush"] is True
    assert "\r" not in result.toml_text


def test_continuation_lines_and_escaped_spaces():
    result = conv("pam_duo_continuation.conf")
    data = toml(result)
    assert data["duo"]["skey"] == SKEY                  # "skey =" then an indented value
    assert data["duo"]["host"] == HOST                  # the indented ';' line is a comment
    assert data["users"]["groups"] == ["users?with?spaces", "no_spaces\\here", "more?spaces"]
    assert "not an exact translation" in note_about(result, "users.groups")


def test_unknown_option_is_an_error():
    with pytest.raises(ConversionError) as info:
        convert(sample("pam_duo_unknown_option.conf"), "/etc/duo/pam_duo.conf")
    assert "line 5: 'quiet' is not a pam_duo option" in str(info.value)
    assert "Invalid pam_duo option: 'quiet'" in str(info.value)


# --------------------------------------------------------------------------------------------
# The INI dialect


def one(extra: str, name: str = "/etc/duo/pam_duo.conf"):
    return convert(HEAD + extra, name)


@pytest.mark.parametrize("value, expected", [
    ("yes", True), ("true", True), ("on", True), ("1", True),
    ("Yes", False), ("TRUE", False), ("no", False), ("", False), ("y", False),
])
def test_duo_unix_boolean_spellings(value, expected):
    result = one(f"autopush = {value}\n")
    assert toml(result)["auth"]["autopush"] is expected
    odd = value not in ("yes", "true", "on", "1", "no", "")
    assert any("lower case" in n for n in result.notes) == odd


def test_inline_comments_need_whitespace_before_the_semicolon():
    assert toml(one("host = a.example.com ;comment\n"))["duo"]["host"] == "a.example.com"
    result = one("host = a.example.com;comment\n")
    assert toml(result)["duo"]["host"] == "a.example.com;comment"
    assert result.config_problems                       # our config refuses that host


def test_hash_is_a_comment_only_at_line_start():
    assert toml(one("# autopush = yes\n"))["auth"]["autopush"] is False
    assert toml(one("host = a.example.com # not a comment\n"))["duo"]["host"] == "a.example.com # not a comment"


def test_sections_are_ignored_and_options_before_any_section_count():
    text = f"ikey = {IKEY}\n[other]\nskey = {SKEY}\n[duo] ; main\nhost = {HOST}\n"
    data = toml(convert(text, "/etc/duo/pam_duo.conf"))
    assert (data["duo"]["ikey"], data["duo"]["skey"], data["duo"]["host"]) == (IKEY, SKEY, HOST)


@pytest.mark.parametrize("line, line_no", [
    ("[duo\n", 6), ("just words\n", 6), ("ikey: DIWJ8X6AEYOR5OMC6TQ1\n", 6), ("IKEY = x\n", 6),
    ("failmode = Secure\n", 6), ("gecos_delim = ,,\n", 6), ("gecos_delim = a\n", 6), ("gecos_username_pos = 0\n", 6),
    ("http_proxy = socks5://proxy:1080\n", 6), ("cafile = certs/ca.pem\n", 6), ("motd = yes\n", 6),
    ("http_proxy = http://proxy:99999\n", 6), ("groups = ,\n", 6), ("quiet = yes\n", 6),
])
def test_invalid_lines_are_errors_naming_the_line(line, line_no):
    with pytest.raises(ConversionError) as info:
        one(line)
    assert f"/etc/duo/pam_duo.conf, line {line_no}:" in str(info.value)


def test_only_duo_unix_parse_errors_say_that_duo_unix_stopped_there():
    with pytest.raises(ConversionError) as info:
        one("cafile = certs/ca.pem\n")
    assert "stops reading" not in str(info.value) and "not converted" in str(info.value)
    with pytest.raises(ConversionError) as info:
        one("gecos_username_pos = 0\n")
    assert "duo_unix stops reading at line 6" in str(info.value)


def test_invalid_failmode_uses_duo_unix_wording():
    with pytest.raises(ConversionError) as info:
        one("failmode = open\n")
    assert "Invalid failmode: 'open'" in str(info.value)


def test_motd_is_a_login_duo_option():
    with pytest.raises(ConversionError) as info:
        one("motd = yes\n", "/etc/duo/pam_duo.conf")
    assert "login_duo option" in str(info.value)
    note_about(one("motd = yes\n", "/etc/duo/login_duo.conf"), "motd", "not carried")
    note_about(one("motd = yes\n", "/etc/duo/duo.conf"), "motd", "not carried")


def test_all_errors_are_reported_at_once():
    with pytest.raises(ConversionError) as info:
        one("junk\nfoo = 1\n")
    assert "line 6:" in str(info.value) and "line 7:" in str(info.value)


def test_long_lines_are_refused_because_duo_unix_splits_them():
    with pytest.raises(ConversionError) as info:
        one("groups = " + " ".join(f"group{i}" for i in range(40)) + "\n")
    assert "line 6:" in str(info.value) and "199" in str(info.value)
    one("; " + "x" * 197 + "\n")                        # 199 bytes: still one line for duo_unix
    one("groups = admin" + " " * 300 + "\n")            # only trailing whitespace beyond


def test_bom_and_nul_are_refused():
    with pytest.raises(ConversionError):
        convert("\ufeff" + HEAD, "/etc/duo/pam_duo.conf")
    with pytest.raises(ConversionError):
        one("host = a\0b\n")


def test_values_keep_quotes_like_duo_unix():
    result = one(f'ikey = "{IKEY}"\n')
    assert toml(result)["duo"]["ikey"] == f'"{IKEY}"'
    note_about(result, "quotes")
    assert result.config_problems


def test_indented_hash_line_continues_the_previous_option():
    result = one("groups = admin\n  # staff\n")
    assert toml(result)["users"]["groups"] == ["admin", "#", "staff"]
    note_about(result, "line 7", "not a comment")
    result = one("host = a.example.com\n  # old host\n")
    assert toml(result)["duo"]["host"] == "# old host"
    note_about(result, "line 7", "continues host")


# --------------------------------------------------------------------------------------------
# Individual options


@pytest.mark.parametrize("value, expected", [("1", 1), ("2", 2), ("3", 3), ("0", 1), ("-4", 1), ("7", 3), ("2x", 2), ("x", 1)])
def test_prompts_are_clamped_like_duo_unix(value, expected):
    result = one(f"prompts = {value}\n")
    assert toml(result)["auth"]["prompts"] == expected
    assert any("prompts" in n for n in result.notes) == (value not in ("1", "2", "3"))


@pytest.mark.parametrize("value, expected", [("30", 30), ("-1", 10), ("0", 10), ("abc", 10), ("5s", 5), ("9000", 600)])
def test_https_timeout(value, expected):
    result = one(f"https_timeout = {value}\n")
    assert toml(result)["duo"]["timeout"] == expected
    note_about(result, "https_timeout")
    assert not result.config_problems


@pytest.mark.parametrize("value, expected, words", [
    ("proxy.example:3128", "http://proxy.example:3128", "http:// is written out"),
    ("http://proxy.example", "http://proxy.example:80", "port 80"),
    ("http://proxy.example:8080/some/path", "http://proxy.example:8080", "path"),
    ("HTTP://proxy.example:8080", "http://proxy.example:8080", None),
    ("http://u:p%40ss@proxy.example:8080", "http://u:p%40ss@proxy.example:8080", None),
])
def test_proxy_shapes(value, expected, words):
    result = one(f"http_proxy = {value}\n")
    assert toml(result)["duo"]["proxy"] == expected
    if words:
        note_about(result, "http_proxy", words)
    assert not result.config_problems
    assert "p%40ss" not in notes_text(result)


@pytest.mark.parametrize("value", ["https://proxy.example:3128", "http://user@proxy.example:3128",
                                   "http://us er:pw@proxy:1", "http://:pw@proxy:1", "http://pr_oxy:3128"])
def test_proxies_that_cannot_be_carried_are_errors(value):
    with pytest.raises(ConversionError) as info:
        one(f"http_proxy = {value}\n")
    message = str(info.value)
    assert "line 6:" in message
    assert "pw@" not in message and "user@" not in message      # credentials are never repeated
    assert "stops reading" not in message                       # duo_unix read the line; we cannot carry it


def test_empty_proxy_means_none():
    assert toml(one("http_proxy =\n"))["duo"]["proxy"] == ""


def test_verified_push_and_autopush():
    assert toml(one("verified_push = yes\n"))["auth"]["verified_push"] is True
    result = one("verified_push = yes\nautopush = yes\n")
    note_about(result, "autopush and verified_push")
    assert any("auth.verified_push" in p for p in result.config_problems)


def test_accept_env_factor_in_pam_duo_gets_a_note():
    result = one("accept_env_factor = yes\n")
    assert toml(result)["auth"]["accept_env_factor"] is True
    note_about(result, "accept_env_factor", "pam-duo-login")


def test_lone_negation_token_exempts_nobody_in_duo_unix():
    result = one("groups = * !wheel\n")
    assert toml(result)["users"]["groups"] == ["*"]
    note = note_about(result, "users.groups")
    assert "same users" in note and "exempted nobody" in note and "*,!group" in note


def test_lists_with_different_negations_are_over_approximated():
    result = one("groups = admin,!users staff\n")
    assert toml(result)["users"]["groups"] == ["admin", "staff"]
    note = note_about(result, "users.groups")
    assert "not an exact translation" in note and "'!users'" in note


def test_lists_sharing_their_negations_are_exact():
    result = one("groups = admin,!robots ops,!robots\n")
    assert toml(result)["users"]["groups"] == ["admin", "ops", "!robots"]
    assert "same users" in note_about(result, "users.groups")


def test_too_many_group_patterns():
    lines = "".join("groups = " + " ".join(f"g{i}_{j}" for j in range(10)) + "\n" for i in range(26))
    with pytest.raises(ConversionError) as info:
        one(lines)
    assert "Exceeded max 256 groups" in str(info.value)


def test_skey_is_scrubbed_even_where_it_leaks_into_a_value():
    result = one(f"host = {SKEY}.example.com\n")
    assert SKEY not in notes_text(result)


# --------------------------------------------------------------------------------------------
# The group translation never asks Duo of fewer users than duo_unix did


def _openssh_match(name: str, pattern: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.DOTALL) is not None


def duo_unix_requires(tokens: list[str], groups: list[str]) -> bool:
    for token in tokens:
        positives = [s for s in token.split(",") if not s.startswith("!")]
        negatives = [s[1:] for s in token.split(",") if s.startswith("!")]
        if any(_openssh_match(g, n) for g in groups for n in negatives):
            continue
        if any(_openssh_match(g, p) for g in groups for p in positives):
            return True
    return False


_sub = st.builds(lambda neg, body: ("!" if neg else "") + body, st.booleans(), st.text("ab*? [!", min_size=0, max_size=3))
_token = st.lists(_sub, min_size=1, max_size=3).map(",".join).filter(bool)
_groups = st.lists(st.text("ab [!", min_size=1, max_size=3), min_size=1, max_size=3)


@settings(max_examples=400, deadline=None)
@given(st.lists(_token, min_size=1, max_size=3), st.lists(_groups, min_size=1, max_size=4))
def test_group_translation_is_exact_or_asks_more_users(tokens, memberships):
    patterns, exact, _, all_negated = translate_groups(tokens)
    if all_negated:
        assert all(p.startswith("!") for p in patterns)
        assert not any(duo_unix_requires(tokens, groups) for groups in memberships)
        return
    ours = UsersSettings(groups=tuple(patterns))
    for groups in memberships:
        theirs = duo_unix_requires(tokens, groups)
        mine = ours.requires_duo(groups)
        if exact:
            assert mine == theirs, (tokens, groups, patterns)
        else:
            assert mine or not theirs, (tokens, groups, patterns)


# --------------------------------------------------------------------------------------------
# The command


def copy_sample(tmp_path, name: str = "pam_duo_full.conf", mode: int = 0o600) -> pathlib.Path:
    src = tmp_path / name
    src.write_bytes((DATA / name).read_bytes())
    src.chmod(mode)
    return src


def test_cli_writes_toml_to_stdout_and_notes_to_stderr(tmp_path, capsys):
    src = copy_sample(tmp_path)
    assert cli.main(["import-duo-unix", str(src)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("# ") and str(src) in captured.out.splitlines()[0]
    tomllib.loads(captured.out)
    assert "note: line 16 (failmode = safe)" in captured.err
    assert "readable by group or others" not in captured.err


def test_cli_writes_dest_mode_0600(tmp_path, capsys):
    src = copy_sample(tmp_path)
    dest = tmp_path / "pam_duo.toml"
    old_umask = os.umask(0)
    try:
        assert cli.main(["import-duo-unix", str(src), "-o", str(dest)]) == 0
    finally:
        os.umask(old_umask)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert parse_config(dest.read_text(), str(dest), read=read_stub).auth.failmode == "safe"
    assert "note:" in captured.err and str(dest) in captured.err


def test_cli_never_overwrites_dest(tmp_path, capsys):
    src = copy_sample(tmp_path)
    dest = tmp_path / "pam_duo.toml"
    dest.write_text("precious\n")
    dest.chmod(0o644)
    assert cli.main(["import-duo-unix", str(src), "--output", str(dest)]) == 1
    captured = capsys.readouterr()
    assert dest.read_text() == "precious\n" and stat.S_IMODE(dest.stat().st_mode) == 0o644
    assert "already exists" in captured.err and captured.out == ""


def test_cli_does_not_follow_a_symlink_at_dest(tmp_path, capsys):
    src = copy_sample(tmp_path)
    target = tmp_path / "target"
    dest = tmp_path / "link.toml"
    dest.symlink_to(target)
    assert cli.main(["import-duo-unix", str(src), "-o", str(dest)]) == 1
    assert not target.exists()
    capsys.readouterr()


def test_cli_unreadable_source(tmp_path, capsys):
    assert cli.main(["import-duo-unix", str(tmp_path / "missing.conf")]) == 1
    captured = capsys.readouterr()
    assert "cannot read" in captured.err and "missing.conf" in captured.err and captured.out == ""
    assert cli.main(["import-duo-unix", str(tmp_path)]) == 1
    capsys.readouterr()


def test_cli_invalid_source_writes_nothing(tmp_path, capsys):
    src = copy_sample(tmp_path, "pam_duo_broken_syntax.conf")
    dest = tmp_path / "out.toml"
    assert cli.main(["import-duo-unix", str(src), "-o", str(dest)]) == 1
    captured = capsys.readouterr()
    assert not dest.exists()
    assert f"{src}, line 5:" in captured.err and captured.out == ""


def test_cli_warns_when_duo_unix_would_not_have_read_the_file(tmp_path, capsys):
    src = copy_sample(tmp_path, mode=0o644)
    assert cli.main(["import-duo-unix", str(src)]) == 0
    captured = capsys.readouterr()
    assert "readable by group or others" in captured.err
    comments = " ".join(line.lstrip("#- ").strip() for line in captured.out.splitlines() if line.startswith("#"))
    assert "readable by group or others" in comments          # in the file's notes too


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["import-duo-unix", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "SRC" in out and "DEST" in out and "0600" in out and "never overwritten" in out


# --------------------------------------------------------------------------------------------
# The translator table


def test_every_duo_unix_option_has_exactly_one_translator():
    from pam_duo_tools import import_duo_unix

    keyed = [name for names in import_duo_unix._TRANSLATORS for name in names]
    assert len(keyed) == len(set(keyed)), "an option is translated twice"
    known = (import_duo_unix._COMMON | import_duo_unix._LOGIN_DUO_ONLY) - {"group"}  # read as groups
    assert set(keyed) == known


@pytest.mark.parametrize("extra, words", [
    ("gecos_parsed = yes\n", ("gecos_parsed", "not carried", "off or had no effect")),
    ("gecos_delim = /\n", ("gecos_delim", "not carried", "off or had no effect")),
    ("gecos_username_pos = 2\n", ("gecos_username_pos", "not carried", "used the GECOS field", "build it from")),
    ("send_gecos = no\n", ("send_gecos", "not carried", "off or had no effect")),
    ("send_gecos = yes\ngecos_delim = /\n", ("lines 6, 7 (gecos_delim, send_gecos)", "used the GECOS field")),
    ("dev_fips_mode = no\n", ("dev_fips_mode", "no effect in duo_unix either")),
    ("fallback_local_ip = no\n", ("fallback_local_ip", "it was off, nothing changes")),
    ("pushinfo = no\n", ()),
    ("http_proxy =\n", ("http_proxy", "empty; no proxy")),
    ("prompts = 2\nprompts = 5\n", ("prompts = '5'", "reads it as 5 and uses 3")),
])
def test_each_translator_notes_what_it_did(extra, words):
    result = one(extra, "/etc/duo/login_duo.conf")
    if words:
        note_about(result, *words)
    else:
        assert not [n for n in result.notes if "pushinfo" in n]
        assert toml(result)["auth"]["pushinfo_command"] is False


def test_prompts_lines_only_lower_it():
    result = one("prompts = 2\nprompts = 5\n")
    assert toml(result)["auth"]["prompts"] == 2
    note_about(result, "lines 6, 7 (prompts)", "the lowest value wins")


def test_accept_env_factor_in_a_login_duo_file_has_no_pam_duo_note():
    result = one("accept_env_factor = yes\n", "/etc/duo/login_duo.conf")
    assert toml(result)["auth"]["accept_env_factor"] is True
    assert not [n for n in result.notes if "pam_duo ignored" in n]
    note_about(one("accept_env_factor = yes\n"), "accept_env_factor", "pam_duo ignored")


def test_notes_of_equal_rank_keep_the_translators_order():
    """Line 1 ties with the rank of the missing-keys and autopush+verified_push notes: the table's order decides."""
    result = convert("accept_env_factor = maybe\nautopush = yes\nverified_push = yes\n", "/etc/duo/pam_duo.conf")
    ranked = [n for n in result.notes if n.startswith(("ikey, skey, host", "line 1 ", "autopush and verified_push"))]
    assert [n.split(":")[0] for n in ranked] == [
        "ikey, skey, host", "line 1 (accept_env_factor = 'maybe')", "autopush and verified_push are both on"]
