"""Configuration parsing and validation (docs/behaviour.md §4)."""
from __future__ import annotations

import os

import pytest

from pam_duo_py import config as config_mod
from pam_duo_py.config import AuthSettings, DuoIdentity, Proxy, load_config, parse_config, parse_map_file
from pam_duo_py.errors import ConfigError, FileRuleError

PATH = "/etc/pam_duo_py/pam_duo.toml"
IKEY = "DIABCDEFGHIJKLMNOPQR"
assert len(IKEY) == 20
SKEY = "Sk3yS3cr3tSk3yS3cr3tSk3yS3cr3tSk3yS3cr3t"
assert len(SKEY) == 40
HOST = "api-12345678.duosecurity.com"
MINIMAL = f'[duo]\nikey = "{IKEY}"\nskey = "{SKEY}"\nhost = "{HOST}"\n'


class Files:
    """An in-memory ``read(path, secret)`` for files the config refers to."""

    def __init__(self, **contents: bytes | FileRuleError) -> None:
        self.contents = {k.replace("__", "/"): v for k, v in contents.items()}
        self.reads: list[tuple[str, bool]] = []

    def add(self, path: str, content: bytes | FileRuleError) -> "Files":
        self.contents[path] = content
        return self

    def __call__(self, path: str, secret: bool) -> bytes:
        self.reads.append((path, secret))
        value = self.contents.get(path)
        if value is None:
            raise FileRuleError(path, "no such file")
        if isinstance(value, FileRuleError):
            raise value
        return value


def parse(text: str, read: Files | None = None):
    return parse_config(text, PATH, read=read or Files())


def problems_of(text: str, read: Files | None = None) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        parse(text, read)
    problems = info.value.problems
    assert problems, "a ConfigError must carry its problems"
    for problem in problems:
        assert problem.startswith(PATH + ": "), problem
    return problems


def with_section(section: str, body: str) -> str:
    if section == "duo":
        return MINIMAL + body + "\n"
    return MINIMAL + f"\n[{section}]\n{body}\n"


# -- valid configs -----------------------------------------------------------------------------

def test_minimal_config_gives_documented_defaults():
    cfg = parse(MINIMAL)
    assert cfg.path == PATH
    assert cfg.duo.ikey == IKEY and cfg.duo.skey == SKEY
    assert cfg.duo.host == HOST and cfg.duo.port is None
    assert cfg.duo.ca_file is None and cfg.duo.proxy is None
    assert cfg.duo.timeout == 10.0
    assert cfg.auth == AuthSettings(failmode="secure", autopush=False, prompts=3, push_timeout=75.0, pushinfo=True,
                                    pushinfo_command=False, verified_push=False, accept_env_factor=False)
    assert cfg.users.groups == () and cfg.users.map_file is None and cfg.users.mapping == ()
    assert cfg.log.audit_file is None
    assert cfg.broker.socket == "/run/pam_duo_py/broker.sock"


def test_every_key_set_to_a_valid_value():
    text = f"""
[duo]
ikey = "{IKEY}"
skey_file = "/etc/pam_duo_py/skey"
host = "API-12345678.duosecurity.com:8443"
ca_file = "/etc/pam_duo_py/ca.pem"
proxy = "http://proxy.example.net:3128"
timeout = 2.5

[auth]
failmode = "safe"
autopush = true
prompts = 1
push_timeout = 30
pushinfo = false
pushinfo_command = true
verified_push = false
accept_env_factor = true

[users]
groups = ["duo-*", "wheel", "!contractors"]
map_file = "/etc/pam_duo_py/users.map"

[log]
audit_file = "/var/log/pam_duo_py/audit.jsonl"

[broker]
socket = "/run/duo/b.sock"
"""
    read = Files().add("/etc/pam_duo_py/skey", (SKEY + "\n").encode()).add("/etc/pam_duo_py/ca.pem", b"PEM") \
        .add("/etc/pam_duo_py/users.map", b"alice alice@example.com\n")
    cfg = parse(text, read)
    assert cfg.duo.skey == SKEY  # read from skey_file, newline stripped
    assert cfg.duo.host == "api-12345678.duosecurity.com" and cfg.duo.port == 8443
    assert cfg.duo.ca_file == "/etc/pam_duo_py/ca.pem"
    assert cfg.duo.proxy == Proxy(host="proxy.example.net", port=3128)
    assert cfg.duo.timeout == 2.5
    assert cfg.auth == AuthSettings(failmode="safe", autopush=True, prompts=1, push_timeout=30.0, pushinfo=False,
                                    pushinfo_command=True, verified_push=False, accept_env_factor=True)
    assert cfg.users.groups == ("duo-*", "wheel", "!contractors")
    assert cfg.users.duo_identity("alice") == DuoIdentity(username="alice@example.com")
    assert cfg.log.audit_file == "/var/log/pam_duo_py/audit.jsonl"
    assert cfg.broker.socket == "/run/duo/b.sock"
    # the secret file is read as a secret, the others are not
    assert ("/etc/pam_duo_py/skey", True) in read.reads
    assert ("/etc/pam_duo_py/ca.pem", False) in read.reads
    assert ("/etc/pam_duo_py/users.map", False) in read.reads


def test_config_objects_are_frozen():
    cfg = parse(MINIMAL)
    with pytest.raises(Exception):
        cfg.auth.failmode = "safe"  # type: ignore[misc]


# -- wrong types -------------------------------------------------------------------------------

WRONG_TYPES = [
    ("duo", "ikey", "1"), ("duo", "skey", "1"), ("duo", "skey_file", "true"), ("duo", "host", "[1]"),
    ("duo", "ca_file", "1"), ("duo", "proxy", "3128"), ("duo", "timeout", '"10"'), ("duo", "timeout", "true"),
    ("auth", "failmode", "1"), ("auth", "autopush", '"yes"'), ("auth", "autopush", "1"), ("auth", "prompts", "2.5"),
    ("auth", "prompts", "true"), ("auth", "prompts", '"3"'), ("auth", "push_timeout", '"75"'),
    ("auth", "push_timeout", "false"), ("auth", "pushinfo", "1"), ("auth", "pushinfo_command", '"no"'),
    ("auth", "verified_push", "0"), ("auth", "accept_env_factor", '"true"'),
    ("users", "groups", '"wheel"'), ("users", "groups", "{a = 1}"), ("users", "map_file", "1"),
    ("log", "audit_file", "false"), ("broker", "socket", "1"),
]


@pytest.mark.parametrize("section,key,value", WRONG_TYPES, ids=[f"{s}.{k}={v}" for s, k, v in WRONG_TYPES])
def test_wrong_type_is_reported_with_file_and_dotted_key(section, key, value):
    text = MINIMAL.replace(f'{key} = "{SKEY}"\n', "") if (section, key) == ("duo", "skey") else MINIMAL
    if (section, key) in (("duo", "ikey"), ("duo", "host")):
        text = "\n".join(line for line in MINIMAL.splitlines() if not line.startswith(key + " ")) + "\n"
    if (section, key) == ("duo", "skey_file"):
        text = "\n".join(line for line in MINIMAL.splitlines() if not line.startswith("skey ")) + "\n"
    if section == "duo":
        text += f"{key} = {value}\n"
    else:
        text += f"\n[{section}]\n{key} = {value}\n"
    problems = problems_of(text)
    mine = [p for p in problems if p.startswith(f"{PATH}: {section}.{key}: must be ")]
    assert mine, problems


def test_non_string_group_pattern_is_reported_by_index():
    problems = problems_of(with_section("users", 'groups = ["wheel", 3]'))
    assert any(p.startswith(f"{PATH}: users.groups[1]:") for p in problems), problems


# -- bad values --------------------------------------------------------------------------------

BAD_VALUES = [
    ("duo", "ikey", '"DIxxxxxxxxxxxxxxxxxx"', "duo.ikey"),
    ("duo", "ikey", '"DI123"', "duo.ikey"),
    ("duo", "skey", '"tooshort"', "duo.skey"),
    ("duo", "skey", '"' + "x" * 39 + '!"', "duo.skey"),
    ("duo", "host", '"not a host"', "duo.host"),
    ("duo", "host", '"-bad.example.com"', "duo.host"),
    ("duo", "host", '"api.example.com:99999"', "duo.host"),
    ("duo", "host", '"api.example.com:0"', "duo.host"),
    ("duo", "host", '"api.example.com:https"', "duo.host"),
    ("duo", "ca_file", '"relative/ca.pem"', "duo.ca_file"),
    ("duo", "proxy", '"socks5://proxy:1080"', "duo.proxy"),
    ("duo", "proxy", '"https://proxy:3128"', "duo.proxy"),
    ("duo", "proxy", '"http://proxy"', "duo.proxy"),
    ("duo", "proxy", '"http://proxy:0"', "duo.proxy"),
    ("duo", "proxy", '"http://proxy:70000"', "duo.proxy"),
    ("duo", "proxy", '"http://user@proxy:3128"', "duo.proxy"),
    ("duo", "proxy", '"proxy:3128"', "duo.proxy"),
    ("duo", "timeout", "0.05", "duo.timeout"),
    ("duo", "timeout", "0", "duo.timeout"),
    ("duo", "timeout", "-1", "duo.timeout"),
    ("duo", "timeout", "601", "duo.timeout"),
    ("duo", "timeout", "inf", "duo.timeout"),
    ("duo", "timeout", "nan", "duo.timeout"),
    ("auth", "failmode", '"open"', "auth.failmode"),
    ("auth", "failmode", '"Secure"', "auth.failmode"),
    ("auth", "prompts", "0", "auth.prompts"),
    ("auth", "prompts", "4", "auth.prompts"),
    ("auth", "prompts", "-1", "auth.prompts"),
    ("auth", "push_timeout", "0", "auth.push_timeout"),
    ("auth", "push_timeout", "601", "auth.push_timeout"),
    ("auth", "push_timeout", "nan", "auth.push_timeout"),
    ("auth", "push_timeout", "inf", "auth.push_timeout"),
    ("users", "groups", '[""]', "users.groups[0]"),
    ("users", "groups", '["two words"]', "users.groups[0]"),
    ("users", "groups", '["!"]', "users.groups[0]"),
    ("users", "groups", '["wheel", "!!x"]', "users.groups[1]"),
    ("users", "map_file", '"users.map"', "users.map_file"),
    ("log", "audit_file", '"audit.jsonl"', "log.audit_file"),
    ("broker", "socket", '"broker.sock"', "broker.socket"),
]


@pytest.mark.parametrize("section,key,value,dotted", BAD_VALUES, ids=[f"{s}.{k}={v}" for s, k, v, _ in BAD_VALUES])
def test_bad_value_is_reported_with_file_and_dotted_key(section, key, value, dotted):
    if section == "duo" and key in ("ikey", "skey", "host"):
        text = "\n".join(line for line in MINIMAL.splitlines() if not line.startswith(key + " ")) + f"\n{key} = {value}\n"
    else:
        text = with_section(section, f"{key} = {value}")
    problems = problems_of(text)
    assert any(p.startswith(f"{PATH}: {dotted}: ") for p in problems), problems


def test_skey_file_must_not_be_empty_or_relative():
    base = "\n".join(line for line in MINIMAL.splitlines() if not line.startswith("skey ")) + "\n"
    assert any(p.startswith(f"{PATH}: duo.skey_file: ") for p in problems_of(base + 'skey_file = ""\n'))
    assert any(p.startswith(f"{PATH}: duo.skey_file: ") for p in problems_of(base + 'skey_file = "skey"\n'))


def test_bad_skey_from_skey_file_is_reported_on_skey_file():
    base = "\n".join(line for line in MINIMAL.splitlines() if not line.startswith("skey ")) + "\n"
    read = Files().add("/etc/pam_duo_py/skey", b"not a key\n")
    problems = problems_of(base + 'skey_file = "/etc/pam_duo_py/skey"\n', read)
    assert any(p.startswith(f"{PATH}: duo.skey_file: must be 40") for p in problems), problems


def test_file_rule_failures_name_the_key_the_path_and_the_reason():
    base = "\n".join(line for line in MINIMAL.splitlines() if not line.startswith("skey ")) + "\n"
    text = base + 'skey_file = "/etc/pam_duo_py/skey"\nca_file = "/etc/ssl/duo.pem"\n[users]\nmap_file = "/etc/pam_duo_py/map"\n'
    read = Files().add("/etc/pam_duo_py/skey", FileRuleError("/etc/pam_duo_py/skey", "mode 0644: must be 0600")) \
        .add("/etc/ssl/duo.pem", FileRuleError("/etc/ssl/duo.pem", "is a symlink"))
    problems = problems_of(text, read)
    assert f"{PATH}: duo.skey_file: /etc/pam_duo_py/skey: mode 0644: must be 0600" in problems
    assert f"{PATH}: duo.ca_file: /etc/ssl/duo.pem: is a symlink" in problems
    assert f"{PATH}: users.map_file: /etc/pam_duo_py/map: no such file" in problems


# -- structure: unknown keys and sections, syntax ----------------------------------------------

def test_unknown_key_in_a_section():
    problems = problems_of(with_section("auth", "fail_mode = \"safe\""))
    assert f"{PATH}: auth.fail_mode: unknown key" in problems


def test_unknown_key_in_duo_section():
    problems = problems_of(MINIMAL + 'failmode = "safe"\n')
    assert f"{PATH}: duo.failmode: unknown key" in problems


def test_unknown_section():
    problems = problems_of(MINIMAL + "\n[remember_me]\nminutes = 5\n")
    assert f"{PATH}: remember_me: unknown section" in problems


def test_unknown_top_level_key():
    problems = problems_of('failmode = "safe"\n' + MINIMAL)
    assert f"{PATH}: failmode: unknown key" in problems


def test_known_section_that_is_not_a_table():
    problems = problems_of('log = "safe"\n' + MINIMAL)
    assert f"{PATH}: log: must be a table" in problems


def test_missing_duo_section_and_required_keys():
    assert f"{PATH}: duo: required section is missing" in problems_of("[auth]\nprompts = 2\n")
    problems = problems_of("[duo]\n")
    assert f"{PATH}: duo.ikey: required key is missing" in problems
    assert any(p.startswith(f"{PATH}: duo.skey: required key is missing") for p in problems)
    assert f"{PATH}: duo.host: required key is missing" in problems


def test_toml_syntax_error_names_file_and_line():
    text = MINIMAL + "\n[auth]\nprompts = \n"
    line = text.splitlines().index("prompts = ") + 1
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert len(info.value.problems) == 1
    problem = info.value.problems[0]
    assert problem.startswith(f"{PATH}: line {line}: TOML syntax error"), problem
    assert SKEY not in problem


def test_toml_syntax_error_on_the_skey_line_does_not_echo_the_key():
    text = f'[duo]\nikey = "{IKEY}"\nskey = "{SKEY}\nhost = "{HOST}"\n'  # unterminated string
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert info.value.problems[0].startswith(f"{PATH}: line 3: TOML syntax error")
    assert SKEY not in str(info.value)


def test_duplicate_key_is_a_syntax_error():
    with pytest.raises(ConfigError) as info:
        parse(MINIMAL + 'host = "other.example.com"\n')
    assert "TOML syntax error" in info.value.problems[0]


def test_several_problems_are_reported_at_once():
    text = f"""
[duo]
ikey = "bad"
skey = "{SKEY}"
host = "bad host"
timeout = 0

[auth]
failmode = "open"
prompts = 9
colour = "blue"

[users]
groups = ["!a", "!b"]

[extra]
x = 1
"""
    with pytest.raises(ConfigError) as info:
        parse(text)
    problems = info.value.problems
    for dotted in ("duo.ikey", "duo.host", "duo.timeout", "auth.failmode", "auth.prompts", "auth.colour",
                   "users.groups", "extra"):
        assert any(p.startswith(f"{PATH}: {dotted}: ") for p in problems), (dotted, problems)
    assert len(problems) >= 8
    for problem in problems:
        assert problem in str(info.value)


# -- rules between keys ------------------------------------------------------------------------

def test_skey_and_skey_file_together_is_an_error():
    read = Files().add("/etc/pam_duo_py/skey", SKEY.encode())
    problems = problems_of(MINIMAL + 'skey_file = "/etc/pam_duo_py/skey"\n', read)
    assert any(p.startswith(f"{PATH}: duo.skey_file: give either") for p in problems), problems


def test_neither_skey_nor_skey_file_is_an_error():
    text = "\n".join(line for line in MINIMAL.splitlines() if not line.startswith("skey ")) + "\n"
    problems = problems_of(text)
    assert any(p.startswith(f"{PATH}: duo.skey: required key is missing") for p in problems), problems


def test_autopush_with_verified_push_is_an_error():
    problems = problems_of(with_section("auth", "autopush = true\nverified_push = true"))
    assert any(p.startswith(f"{PATH}: auth.verified_push: ") and "autopush" in p for p in problems), problems
    # each alone is fine
    assert parse(with_section("auth", "autopush = true")).auth.autopush is True
    assert parse(with_section("auth", "verified_push = true")).auth.verified_push is True


def test_only_negated_groups_is_an_error():
    problems = problems_of(with_section("users", 'groups = ["!contractors", "!temp*"]'))
    assert any(p.startswith(f"{PATH}: users.groups: has only negated") for p in problems), problems
    assert parse(with_section("users", 'groups = ["*", "!contractors"]')).users.groups == ("*", "!contractors")


# -- map_file ----------------------------------------------------------------------------------

MAP_PATH = "/etc/pam_duo_py/users.map"


def test_map_file_both_line_forms_comments_and_blank_lines():
    text = "# local duo\n\nalice  alice.smith@example.com\n   \nbob user_id=DUABCDEFGHIJ01234567\n# end\n"
    mapping, problems = parse_map_file(text, MAP_PATH)
    assert problems == []
    assert dict(mapping) == {"alice": DuoIdentity(username="alice.smith@example.com"),
                             "bob": DuoIdentity(user_id="DUABCDEFGHIJ01234567")}


def test_map_file_comment_may_end_a_line():
    text = "alice alice.smith@example.com   # moved to the new tenant\nbob user_id=DUABCDEFGHIJ01234567#x\n  # only\n"
    mapping, problems = parse_map_file(text, MAP_PATH)
    assert problems == []
    assert dict(mapping) == {"alice": DuoIdentity(username="alice.smith@example.com"),
                             "bob": DuoIdentity(user_id="DUABCDEFGHIJ01234567")}


def test_map_file_line_malformed_after_removing_its_comment_is_still_reported():
    mapping, problems = parse_map_file("alice # bob\n", MAP_PATH)
    assert mapping == () and problems[0].startswith(f"{MAP_PATH}: line 1: ")


def test_map_file_bad_lines_are_reported_with_line_numbers():
    text = "\n".join([
        "alice alice@example.com",        # 1 ok
        "justone",                        # 2 one field
        "carol c extra",                  # 3 three fields
        "alice other",                    # 4 mapped twice
        "dave user_id=DU123",             # 5 bad user id
        "erin user_id=du" + "A" * 18,     # 6 bad user id (lower case)
        "frank " + "x" * 101,             # 7 too long
        "gina na\x01me",                  # 8 control character
        "hank hank",                      # 9 ok
    ]) + "\n"
    mapping, problems = parse_map_file(text, MAP_PATH)
    assert [name for name, _ in mapping] == ["alice", "hank"]
    for number in range(2, 9):
        assert any(p.startswith(f"{MAP_PATH}: line {number}: ") for p in problems), (number, problems)
    assert not any(p.startswith(f"{MAP_PATH}: line 1:") or p.startswith(f"{MAP_PATH}: line 9:") for p in problems)


def test_map_file_problems_reach_the_config_error():
    read = Files().add(MAP_PATH, b"alice\n")
    problems = problems_of(with_section("users", f'map_file = "{MAP_PATH}"'), read)
    assert any(p.startswith(f"{PATH}: users.map_file: {MAP_PATH}: line 1: ") for p in problems), problems


def test_map_file_that_is_not_utf8():
    read = Files().add(MAP_PATH, b"alice \xff\xfe\n")
    problems = problems_of(with_section("users", f'map_file = "{MAP_PATH}"'), read)
    assert any(p.startswith(f"{PATH}: users.map_file: ") and "UTF-8" in p for p in problems), problems


def test_mapping_is_used_for_duo_identity():
    read = Files().add(MAP_PATH, b"alice a.smith\nbob user_id=DUABCDEFGHIJ01234567\n")
    cfg = parse(with_section("users", f'map_file = "{MAP_PATH}"'), read)
    assert cfg.users.duo_identity("alice").params() == {"username": "a.smith"}
    assert cfg.users.duo_identity("bob").params() == {"user_id": "DUABCDEFGHIJ01234567"}
    assert cfg.users.duo_identity("carol").params() == {"username": "carol"}


# -- proxy -------------------------------------------------------------------------------------

@pytest.mark.parametrize("value,expected", [
    ("http://proxy.example.net:3128", Proxy("proxy.example.net", 3128)),
    ("http://proxy.example.net:3128/", Proxy("proxy.example.net", 3128)),
    ("http://10.0.0.1:8080", Proxy("10.0.0.1", 8080)),
    ("http://[2001:db8::1]:8080", Proxy("2001:db8::1", 8080)),
    ("http://bob:s3cret@proxy:3128", Proxy("proxy", 3128, "bob", "s3cret")),
    ("http://bob:@proxy:3128", Proxy("proxy", 3128, "bob", "")),
])
def test_proxy_parsing(value, expected):
    assert parse(with_section("duo", f'proxy = "{value}"')).duo.proxy == expected


def test_empty_proxy_means_none():
    assert parse(with_section("duo", 'proxy = ""')).duo.proxy is None


def test_proxy_password_is_not_in_repr():
    cfg = parse(with_section("duo", 'proxy = "http://bob:Pr0xyPassw0rd@proxy:3128"'))
    assert "Pr0xyPassw0rd" not in repr(cfg)


# -- the skey never leaks ----------------------------------------------------------------------

def test_skey_is_not_in_repr_or_str_of_the_config():
    cfg = parse(MINIMAL)
    for text in (repr(cfg), str(cfg), repr(cfg.duo), str(cfg.duo)):
        assert SKEY not in text
        assert SKEY[:20] not in text


def test_skey_is_not_in_any_error_text():
    texts = []
    # a valid skey next to other errors
    bad = MINIMAL.replace(IKEY, "nope") + "timeout = 0\n[auth]\nprompts = 7\n"
    # an skey of the wrong shape
    wrong = MINIMAL.replace(SKEY, SKEY + "!")
    # an skey placed under the wrong key, or the wrong section
    misplaced = MINIMAL + f'secret = "{SKEY}"\n[auth]\nskey = "{SKEY}"\n[{SKEY[:10]}x]\n'
    # an skey_file holding something that is not a key
    read = Files().add("/k", (SKEY + "!\n").encode())
    from_file = "\n".join(line for line in MINIMAL.splitlines() if not line.startswith("skey ")) + '\nskey_file = "/k"\n'
    for text, files in ((bad, None), (wrong, None), (misplaced, None), (from_file, read)):
        with pytest.raises(ConfigError) as info:
            parse(text, files)
        texts.append(str(info.value))
        texts.extend(info.value.problems)
        texts.append(repr(info.value))
    for text in texts:
        assert SKEY not in text, text


# -- host --------------------------------------------------------------------------------------

def test_host_with_port_and_case():
    cfg = parse(MINIMAL.replace(HOST, "API-1.DuoSecurity.com:8443"))
    assert (cfg.duo.host, cfg.duo.port) == ("api-1.duosecurity.com", 8443)
    cfg = parse(MINIMAL.replace(HOST, "localhost:4443"))
    assert (cfg.duo.host, cfg.duo.port) == ("localhost", 4443)


# -- load_config -------------------------------------------------------------------------------

def test_load_config_missing_file_names_the_path(tmp_path):
    path = str(tmp_path / "missing.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == (f"{path}: no such file",)


def test_load_config_reads_a_good_file(tmp_path):
    path = tmp_path / "pam_duo.toml"
    path.write_text(MINIMAL)
    os.chmod(path, 0o600)
    cfg = load_config(str(path))
    assert cfg.path == str(path) and cfg.duo.skey == SKEY


def test_load_config_refuses_a_config_readable_by_others(tmp_path):
    path = tmp_path / "pam_duo.toml"
    path.write_text(MINIMAL)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.problems[0].startswith(f"{path}: mode 0644")
    assert SKEY not in str(info.value)


def _config_file(tmp_path, text, mode):
    path = tmp_path / "pam_duo.toml"
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


@pytest.mark.parametrize("mode", [0o640, 0o440, 0o600, 0o400])
def test_load_config_without_skey_may_be_group_readable(tmp_path, mode):
    skey_file = tmp_path / "skey"
    skey_file.write_text(SKEY + "\n")
    os.chmod(skey_file, 0o600)
    base = "\n".join(line for line in MINIMAL.splitlines() if not line.startswith("skey ")) + "\n"
    cfg = load_config(_config_file(tmp_path, base + f'skey_file = "{skey_file}"\n', mode))
    assert cfg.duo.skey == SKEY


@pytest.mark.parametrize("mode", [0o640, 0o440, 0o604])
def test_load_config_holding_skey_must_be_owner_only(tmp_path, mode):
    path = _config_file(tmp_path, MINIMAL, mode)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0].startswith(f"{path}: ")
    assert f"mode {mode:04o}" in info.value.problems[0] and SKEY not in str(info.value)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o641])
def test_load_config_without_skey_is_never_readable_by_others(tmp_path, mode):
    base = "\n".join(line for line in MINIMAL.splitlines() if not line.startswith("skey ")) + "\n"
    path = _config_file(tmp_path, base + 'skey_file = "/nonexistent/skey"\n', mode)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == (f"{path}: mode {mode:04o} is readable by others (0640 at most)",)


def test_load_config_not_utf8(tmp_path):
    path = tmp_path / "pam_duo.toml"
    path.write_bytes(b"[duo]\nikey = \"\xff\"\n")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.problems == (f"{path}: not valid UTF-8",)


def test_default_read_uses_the_file_rule(tmp_path, monkeypatch):
    seen = []

    def fake_read_checked(path, *, secret=False):
        seen.append((path, secret))
        return SKEY.encode()

    monkeypatch.setattr(config_mod.files, "read_checked", fake_read_checked)
    base = "\n".join(line for line in MINIMAL.splitlines() if not line.startswith("skey ")) + "\n"
    cfg = parse_config(base + 'skey_file = "/etc/pam_duo_py/skey"\n', PATH)
    assert cfg.duo.skey == SKEY
    assert seen == [("/etc/pam_duo_py/skey", True)]


def test_the_example_ikey_is_refused():
    problems = problems_of(MINIMAL.replace(IKEY, "DIXXXXXXXXXXXXXXXXXX"))
    assert any(p.startswith(f"{PATH}: duo.ikey: ") for p in problems), problems


# -- the str-method checks hold to the regular expressions they replace -------------------------

import re  # noqa: E402

from hypothesis import example, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_IKEY_RE = re.compile(r"^DI[0-9A-Z]{18}$")
_USER_ID_RE = re.compile(r"^DU[0-9A-Z]{18}$")
_SKEY_RE = re.compile(r"^[0-9A-Za-z]{40}$")
_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
# Mostly the characters that matter (and their near misses), so that matches are common.
_NEAR = st.sampled_from("DIUaz09AZ-.\n _é٣Ａｚ")
_KEYISH = st.one_of(st.text(_NEAR, max_size=45), st.text(max_size=45),
                    st.from_regex(_IKEY_RE, fullmatch=True), st.from_regex(_SKEY_RE, fullmatch=True),
                    st.from_regex(_USER_ID_RE, fullmatch=True),
                    st.from_regex(r"D[IU][0-9A-Za-z]{16,20}|[0-9A-Za-z]{38,42}", fullmatch=True))
_LABEL = st.one_of(st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,64}[A-Za-z0-9])?", fullmatch=True),
                   st.text(_NEAR, max_size=4))
_HOSTISH = st.one_of(st.lists(_LABEL, min_size=1, max_size=8).map(".".join), st.text(_NEAR, max_size=70),
                     st.text(max_size=20))


@given(_KEYISH)
@example("DI" + "A" * 18 + "\n")
@example("DI" + "٣" * 18)
@example("DI" + "A" * 19)
@example("a" * 41)
def test_key_checks_match_the_patterns(text):
    assert config_mod._is_duo_id(text, "DI") == bool(_IKEY_RE.fullmatch(text))
    assert config_mod._is_duo_id(text, "DU") == bool(_USER_ID_RE.fullmatch(text))
    assert config_mod._is_skey(text) == bool(_SKEY_RE.fullmatch(text))


@given(_HOSTISH)
@example("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61)  # 253
@example("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 62)  # 254
@example("a" * 64)
@example("example.com.")
@example("-a.com")
@example("a-.com")
@example("a..com")
@example("localhost\n")
def test_hostname_check_matches_the_pattern(name):
    assert config_mod._is_hostname(name) == bool(_HOSTNAME_RE.fullmatch(name))
