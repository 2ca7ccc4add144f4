"""``pam-duo-py import-duo-unix``: convert a duo_unix INI config to this product's TOML.

The source is read the way duo_unix reads it (its small inih dialect):

* physical lines end at ``\\n`` (a trailing ``\\r`` is whitespace, so CRLF files
  work); duo_unix reads at most 199 bytes per line and parses the rest as a new
  line, so a longer line does not mean what it says and is refused here;
* leading and trailing whitespace is ignored; ``;`` or ``#`` as the first
  character starts a comment; ``;`` preceded by whitespace starts an inline
  comment in a ``[section]`` line, a name and a value (``a = b;c`` keeps ``b;c``);
* ``[section]`` lines are accepted and ignored (options count in any section);
  a ``[`` line without ``]`` is an error;
* ``name = value``; a line that is neither is an error; values keep quotes;
* an indented line after an option continues it: duo_unix hands the line to the
  previous option again (``skey =`` followed by an indented key sets the key);
  an indented ``;`` line is a comment, an indented ``#`` line is a value;
* option names are case-sensitive; an unknown option is an error (duo_unix
  stops reading at it, so nothing below it was ever in effect); ``motd`` is a
  login_duo option (which program a file is for comes from its name);
* booleans are true only when exactly ``yes``, ``true``, ``on`` or ``1``;
* a repeated option replaces the earlier value, except ``groups``/``group``
  (accumulate) and ``prompts`` (the lowest wins).

Everything duo_unix itself would refuse to read, and everything that cannot be
carried over safely, is a :class:`ConversionError` naming the file and line.
Everything else converts; each option that is not carried over, or whose meaning
changes, gets a note. The secret key and proxy credentials never appear in notes
or errors. TLS verification is never turned off.
"""
from __future__ import annotations

import os
import re
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Callable, Sequence

from pam_duo_py import files
from pam_duo_py.config import DEFAULT_PATH, DEFAULT_SOCKET, parse_config
from pam_duo_py.errors import ConfigError, PamDuoError

MAX_SOURCE_SIZE = 1 << 20
LINE_BYTES = 199          # fgets() with duo_unix's 200-byte buffer
MAX_GROUP_TOKENS = 255
DEFAULT_TIMEOUT = 10
MAX_TIMEOUT = 600

_C_SPACE = " \t\n\v\f\r"  # isspace() in the C locale
_TRUE = ("yes", "true", "on", "1")
_FALSE_SPELLINGS = ("no", "false", "off", "0", "")
_COMMON = frozenset({
    "ikey", "skey", "host", "groups", "group", "failmode", "pushinfo", "noverify", "cafile",
    "http_proxy", "autopush", "verified_push", "prompts", "accept_env_factor", "fallback_local_ip",
    "https_timeout", "send_gecos", "gecos_username_pos", "gecos_delim", "gecos_parsed", "dev_fips_mode",
})
_LOGIN_DUO_ONLY = frozenset({"motd"})
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,49}$")
# Characters that our group patterns cannot hold literally: whitespace and '!' are refused by the
# config, and '[' starts a character class in fnmatch where OpenSSH's matcher takes it literally.
_UNREPRESENTABLE = re.compile(r"[\s!\[]")
_PROXY_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_PROXY_USER = re.compile(r"^[^:@/\s]+$")
_PROXY_PASSWORD = re.compile(r"^[^@/\s]*$")
_PROXY_HOST = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])$")


class ConversionError(PamDuoError):
    """The source cannot be converted; every problem names the file and, where there is one, the line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Conversion:
    toml_text: str
    notes: list[str] = field(default_factory=list)
    # What our own config loader still reports for toml_text (empty when it loads as is).
    config_problems: list[str] = field(default_factory=list)


@dataclass
class _Entry:
    name: str
    value: str
    line: int
    continued: bool = False


# --------------------------------------------------------------------------------------------
# Reading duo_unix's INI dialect


def _rstrip(s: str) -> str:
    return s.rstrip(_C_SPACE)


def _lskip(s: str) -> str:
    return s.lstrip(_C_SPACE)


def _find_char_or_comment(s: str, char: str | None) -> int:
    """inih's find_char_or_comment: index of ``char`` or of a ``;`` that follows whitespace."""
    was_space = False
    for index, c in enumerate(s):
        if c == char or (was_space and c == ";"):
            return index
        was_space = c in _C_SPACE
    return len(s)


def _program(source_name: str) -> str | None:
    base = os.path.basename(source_name)
    if "login_duo" in base:
        return "login_duo"
    if "pam_duo" in base:
        return "pam_duo"
    return None


def _shown_name(name: str) -> str:
    return f"'{name}'" if _SAFE_NAME.match(name) else "the name before '=' (not shown: it is not an option name)"


def _parse_ini(text: str, program: str | None) -> tuple[list[_Entry], list[tuple[int, str, bool]]]:
    """(entries, problems); a problem is (line, text, whether duo_unix's own parser stops at that line)."""
    entries: list[_Entry] = []
    problems: list[tuple[int, str, bool]] = []
    prev_name = ""
    label = f"{program} option" if program else "duo_unix option"
    for number, raw in enumerate(text.split("\n"), start=1):
        if number == 1 and raw.startswith("\ufeff"):
            problems.append((number, "the file starts with a UTF-8 byte order mark, which duo_unix reads as part of "
                                     "the first line (a parse error on line 1); remove it", True))
            raw = raw[1:]
        if "\0" in raw:
            problems.append((number, "contains a NUL byte; duo_unix ignores the rest of the line after it", False))
            continue
        data = raw.encode("utf-8", "surrogateescape")
        if len(data) > LINE_BYTES and data[LINE_BYTES:].strip(_C_SPACE.encode()):
            problems.append((number, f"is {len(data)} bytes long; duo_unix reads lines in pieces of at most "
                                     f"{LINE_BYTES} bytes and parses the rest as another line, so it does not read "
                                     f"this line as written; shorten it (groups can be split over several lines)", False))
            continue
        stripped = _rstrip(raw)
        start = _lskip(stripped)
        if prev_name and start and len(start) < len(stripped):
            if start.startswith(";"):
                continue
            entries.append(_Entry(prev_name, start, number, continued=True))
            continue
        if not start or start[0] in ";#":
            continue
        if start[0] == "[":
            end = _find_char_or_comment(start[1:], "]")
            if end < len(start) - 1 and start[1 + end] == "]":
                prev_name = ""
            else:
                problems.append((number, "a '[section]' line without ']'", True))
            continue
        end = _find_char_or_comment(start, "=")
        if end == len(start) or start[end] != "=":
            hint = " (duo_unix does not accept ':' between name and value)" if ":" in start else ""
            problems.append((number, f"not 'name = value', '[section]' or a comment{hint}", True))
            continue
        name = _rstrip(start[:end])
        value = _lskip(start[end + 1:])
        value = _rstrip(value[:_find_char_or_comment(value, None)])
        prev_name = name[:49]
        known = name in _COMMON or (program != "pam_duo" and name in _LOGIN_DUO_ONLY)
        if not known:
            logged = f" (\"Invalid {program} option: '{name}'\")" if program and _SAFE_NAME.match(name) else ""
            if name in _LOGIN_DUO_ONLY:
                why = f"'{name}' is a login_duo option; pam_duo rejects it{logged}"
            elif name.lower() in _COMMON or name.lower() in _LOGIN_DUO_ONLY:
                why = f"{_shown_name(name)} is not a {label}{logged}: option names are lower case"
            else:
                why = f"{_shown_name(name)} is not a {label}{logged}"
            problems.append((number, why, True))
            continue
        entries.append(_Entry(name, value, number))
    return entries, problems


# --------------------------------------------------------------------------------------------
# Small utilities


def _lines(entries: list[_Entry]) -> str:
    numbers = sorted({e.line for e in entries})
    return ("line " if len(numbers) == 1 else "lines ") + ", ".join(str(n) for n in numbers)


def _safe(text: str, limit: int = 80) -> str:
    """A source value quoted for a note: control characters escaped, length capped."""
    text = text if len(text) <= limit else text[:limit] + "..."
    out = []
    for c in text:
        code = ord(c)
        if code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF or 0x80 <= code <= 0x9F:
            out.append(f"\\x{code & 0xFF:02x}")
        elif c in "\\'":
            out.append("\\" + c)
        else:
            out.append(c)
    return "'" + "".join(out) + "'"


def _atoi(value: str) -> tuple[int, bool]:
    """C atoi(): (number, whether the whole value was a plain integer)."""
    match = re.match(r"^[ \t\n\v\f\r]*([+-]?[0-9]+)", value)
    if not match:
        return 0, False
    number = int(match[1])
    number = max(-(2**31), min(2**31 - 1, number))
    return number, match.end() == len(value) and value == value.strip()


def toml_string(value: str) -> str:
    """A TOML basic string."""
    out = ['"']
    for c in value:
        code = ord(c)
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c == "\t":
            out.append("\\t")
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def _has_surrogates(value: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in value)


def _comment_text(text: str) -> str:
    return "".join(c if c == "\t" or (ord(c) >= 0x20 and ord(c) != 0x7F and not 0xD800 <= ord(c) <= 0xDFFF)
                   else f"\\x{ord(c) & 0xFF:02x}" for c in text)


# --------------------------------------------------------------------------------------------
# Option translation


@dataclass
class _Out:
    """The converted settings and what was said about them."""

    notes: list[tuple[int, str]] = field(default_factory=list)   # (sort key, text)
    problems: list[tuple[int, str, bool]] = field(default_factory=list)   # (line, text, duo_unix stops there)
    secrets: list[str] = field(default_factory=list)
    duo: dict[str, object] = field(default_factory=dict)
    auth: dict[str, object] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)         # "duo.host" -> "line 4"

    def note(self, text: str, order: int = 1000) -> None:
        self.notes.append((order, text))

    def refuse(self, line: int, text: str, *, duo_unix_stops: bool = False) -> None:
        """A problem that makes the conversion fail; ``duo_unix_stops``: duo_unix's parser stops there too."""
        self.problems.append((line, text, duo_unix_stops))


def _split_groups(value: str) -> list[str]:
    """duo_unix's groups splitting: strtok on spaces, a token ending in a backslash joins the next one."""
    parts = [p for p in value.split(" ") if p]
    tokens: list[str] = []
    index = 0
    while index < len(parts):
        token = parts[index]
        index += 1
        while token.endswith("\\") and index < len(parts):
            token = token[:-1] + " " + parts[index]
            index += 1
        tokens.append(token)
    return tokens


def translate_groups(tokens: list[str]) -> tuple[list[str], bool, list[str], bool]:
    """Translate duo_unix group tokens (OpenSSH pattern-lists) to our single pattern list.

    duo_unix: a user must do Duo when ANY token matches; a token matches when a group matches one
    of its positive patterns and none of its negated ones. Ours is one such token. Returns
    (patterns, exact, remarks, all_negated). When not exact, the result asks Duo of a superset
    of the users duo_unix asked (never fewer). When all_negated (duo_unix asked nobody), the
    negated patterns are returned as written and the caller reports the list as an error.
    """
    remarks: list[str] = []
    exact = True
    effective: list[tuple[list[str], list[str]]] = []
    all_negated_patterns: list[str] = []
    for token in tokens:
        positives: list[str] = []
        negatives: list[str] = []
        raw_negatives: list[str] = []
        for sub in token.split(","):
            if sub.startswith("!"):
                pattern = sub[1:]
                if pattern:
                    raw_negatives.append(pattern)
                if not pattern:
                    continue
                if _UNREPRESENTABLE.search(pattern):
                    exact = False
                    remarks.append(f"the negated pattern {_safe('!' + pattern)} cannot be written in users.groups "
                                   f"(spaces, '!' and '[' have no literal form there), so it was dropped: members "
                                   f"of that group now need Duo too")
                    continue
                negatives.append(pattern)
            elif sub:
                pattern = _UNREPRESENTABLE.sub("?", sub)
                if pattern != sub:
                    exact = False
                    remarks.append(f"the pattern {_safe(sub)} became {_safe(pattern)} (spaces, '!' and '[' have no "
                                   f"literal form in users.groups; '?' matches them and possibly a few more groups)")
                positives.append(pattern)
        if positives:
            effective.append((positives, negatives))
        else:
            all_negated_patterns.extend("!" + n for n in raw_negatives)
            if raw_negatives:
                remarks.append(f"the list {_safe(token)} has no positive pattern, so duo_unix never matched it and it "
                               f"exempted nobody; dropped (duo_unix's way to exempt a group is '*,!group', which is "
                               f"[\"*\", \"!group\"] here)")
    if not effective:
        return _dedupe(all_negated_patterns), exact, remarks, True

    positives_all = _dedupe([p for pos, _ in effective for p in pos])
    negative_sets = [frozenset(neg) for _, neg in effective]
    first_negatives = _dedupe([n for _, neg in effective for n in neg])
    if all(s == negative_sets[0] for s in negative_sets):
        negatives_kept = first_negatives
    else:
        common = frozenset.intersection(*negative_sets)
        negatives_kept = [n for n in first_negatives if n in common]
        dropped = [n for n in first_negatives if n not in common]
        exact = False
        remarks.append("duo_unix asks Duo of a user when ANY of its space-separated lists matches, and these lists "
                       "exclude different groups, which one users.groups list cannot say exactly; the negations not "
                       "shared by every list were dropped (" + ", ".join(_safe("!" + n) for n in dropped) + "), so "
                       "everyone duo_unix asked for Duo is still asked, and members of those groups may now be asked too")
    return positives_all + ["!" + n for n in negatives_kept], exact, remarks, False


def _dedupe(items: list[str]) -> list[str]:
    seen: set[str] = set()
    result = []
    for item in items:
        if item not in seen:
            seen.add(item)
            result.append(item)
    return result


def _proxy(entry: _Entry, out: _Out) -> str | None:
    """duo_unix's ``[http://][user:pass@]host[:port][/...]`` to ours; None (with a problem) if it cannot be carried."""
    value = entry.value
    scheme = _PROXY_SCHEME.match(value)
    if scheme and scheme[1].lower() != "http":
        out.refuse(entry.line, f"http_proxy uses the scheme '{_safe(scheme[1], 20)[1:-1]}://': duo_unix "
                                         f"accepts only http:// proxies and refused every login with this setting "
                                         f"(\"http_proxy must be HTTP\"); an HTTP CONNECT proxy is all we support "
                                         f"too: write http://host:port, or remove the line to connect directly")
        return None
    rest = value[scheme.end():] if scheme else value
    path = ""
    if "/" in rest:
        rest, path = rest.split("/", 1)
        path = "/" + path
    user = password = None
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
        user, sep, password = userinfo.partition(":")
        if not sep:
            password = None
        if user:
            out.secrets.append(userinfo)
        if password:
            out.secrets.append(password)
    host, port = rest, ""
    match = re.match(r"^(.*?)(?::([0-9]*))?$", rest) if not rest.startswith("[") else re.match(r"^(\[[^\]]*\])(?::([0-9]*))?$", rest)
    if match:
        host, port = match[1], match[2] or ""
    problems = []
    if not host or not _PROXY_HOST.match(host):
        problems.append("the proxy host name is not valid")
    if port and not 0 < int(port) < 65536:
        problems.append("the port is not between 1 and 65535")
    if user is not None and not _PROXY_USER.match(user):
        problems.append("the proxy user name is empty or has characters that duo.proxy cannot hold (':', '@', '/', spaces)")
    if password is not None and not _PROXY_PASSWORD.match(password):
        problems.append("the proxy password has characters that duo.proxy cannot hold ('@', '/', spaces)")
    if user is not None and password is None:
        problems.append("a proxy user without a password (user:password@) cannot be written in duo.proxy")
    if problems:
        out.refuse(entry.line, "http_proxy cannot be carried over safely: " + "; ".join(problems) +
                   "; fix it (http://[user:password@]host:port) or remove the line")
        return None
    shown = f"http://{'***@' if user else ''}{host}:{port or 80}"
    changes = []
    if not port:
        changes.append("duo_unix's default port 80 is written out")
    if path:
        changes.append("the path after the host, which duo_unix ignored, is dropped")
    if not scheme:
        changes.append("http:// is written out")
    if changes:
        out.note(f"line {entry.line} (http_proxy): duo.proxy = \"{shown}\": " + "; ".join(changes) + ".", entry.line)
    credentials = f"{user}:{password}@" if user else ""
    return f"http://{credentials}{host}:{port or 80}"


def _boolean(entries: list[_Entry], out: _Out) -> bool:
    last = entries[-1]
    if last.value not in _TRUE and last.value not in _FALSE_SPELLINGS:
        out.note(f"line {last.line} ({last.name} = {_safe(last.value, 30)}): duo_unix reads only yes, true, on or 1 "
                 f"(lower case) as true, so this was off; converted as off.", last.line)
    return last.value in _TRUE


@dataclass(frozen=True)
class _Source:
    """The options as read: entries by name (``group`` counted as ``groups``), in file order."""

    by_name: dict[str, list[_Entry]]
    program: str | None
    where: str

    def last(self, name: str) -> _Entry | None:
        return self.by_name[name][-1] if name in self.by_name else None


_Translator = Callable[[_Source, _Out], None]


# Values duo_unix itself refuses (each one stops its parser): option name -> the problem, or None.
def _bad_failmode(value: str) -> str | None:
    if value in ("safe", "secure"):
        return None
    return f"failmode must be exactly safe or secure; duo_unix refuses this value (\"Invalid failmode: {_safe(value, 30)}\")"


def _bad_gecos_username_pos(value: str) -> str | None:
    if _atoi(value)[0] >= 1:
        return None
    return "gecos_username_pos must be 1 or more; duo_unix refuses it (\"Gecos position starts at 1\")"


def _bad_gecos_delim(value: str) -> str | None:
    if len(value) == 1 and value != ":" and 0x21 <= ord(value) <= 0x7E and not value.isalnum():
        return None
    return "gecos_delim must be one punctuation character other than ':'; duo_unix refuses this value"


_VALUE_CHECKS: dict[str, Callable[[str], str | None]] = {
    "failmode": _bad_failmode,
    "gecos_username_pos": _bad_gecos_username_pos,
    "gecos_delim": _bad_gecos_delim,
}
# Options whose values are carried as text: they must be valid UTF-8.
_TEXT_OPTIONS = ("ikey", "skey", "host", "cafile", "http_proxy", "groups", "group")


def _refuse_bad_values(entries: list[_Entry], out: _Out) -> None:
    for entry in entries:
        check = _VALUE_CHECKS.get(entry.name)
        problem = check(entry.value) if check else None
        if problem:
            out.refuse(entry.line, problem, duo_unix_stops=True)
        elif entry.name in _TEXT_OPTIONS and _has_surrogates(entry.value):
            out.refuse(entry.line, f"the value of {entry.name} is not valid UTF-8")


def _note_repeats(src: _Source, out: _Out) -> None:
    """Repeated options and continuation lines, which duo_unix reads as new values."""
    for name, group in src.by_name.items():
        if name == "groups":
            for entry in group:
                if entry.continued and entry.value.startswith("#"):
                    out.note(f"line {entry.line}: this indented '#' line is not a comment for duo_unix: it continues "
                             f"groups, so its words were group patterns, and are here too.", entry.line)
            continue
        plain = [e for e in group if not e.continued]
        for index, entry in enumerate(group):
            if entry.continued and index > 0 and group[index - 1].value:
                out.note(f"line {entry.line}: this indented line continues {name} (line {group[index - 1].line}); "
                         f"duo_unix reads it as a new value for {name}, replacing the earlier one"
                         + (" (an indented '#' line is not a comment for duo_unix)" if entry.value.startswith("#") else "")
                         + ".", entry.line)
        if len(plain) > 1:
            rule = "the lowest value wins" if name == "prompts" else f"duo_unix uses the last one (line {group[-1].line})"
            out.note(f"{_lines(plain)} ({name}): set more than once; {rule}.", plain[0].line)


def _note_quotes(entries: list[_Entry], out: _Out) -> None:
    for entry in entries:
        quoted = len(entry.value) >= 2 and entry.value[0] == entry.value[-1] and entry.value[0] in "\"'"
        if quoted and entry.name in ("ikey", "host", "cafile", "http_proxy", "groups", "group"):
            out.note(f"line {entry.line} ({entry.name}): the value is in quotes; duo_unix keeps quotes as part of "
                     f"the value, and so does this conversion.", entry.line)
        if quoted and entry.name == "skey":
            out.note(f"line {entry.line} (skey): the value is in quotes; duo_unix keeps quotes as part of the key.", entry.line)


# --------------------------------------------------------------------------------------------
# One translator per option (or per options duo_unix reads together), in the order their notes
# are listed when they rank alike.


def _duo_keys(src: _Source, out: _Out) -> None:
    """ikey, skey, host: duo_unix refuses the file when one is missing (one message for the three)."""
    for entry in src.by_name.get("skey", []):
        if entry.value:
            out.secrets.append(entry.value)
    missing = []
    for name in ("ikey", "skey", "host"):
        entry = src.last(name)
        if entry is None or entry.value == "":
            missing.append(name)
            continue
        out.duo[name] = entry.value
        out.origin[f"duo.{name}"] = f"line {entry.line}"
    if not missing:
        return
    failmode = src.last("failmode")
    source_failmode = failmode.value if failmode is not None and failmode.value in ("safe", "secure") else "safe"
    opened = " with failmode safe, it let every user in without Duo" if source_failmode == "safe" else \
        " with failmode secure, it refused every login"
    out.note(f"{', '.join(missing)}: missing or empty in the source. duo_unix refuses such a file (\"Missing host, "
             f"ikey, or skey in {src.where}\");{opened}. The converted config does not load until you set "
             + " and ".join(f"duo.{n}" for n in missing) + (" (or duo.skey_file)" if "skey" in missing else "")
             + ".", 1)


def _failmode(src: _Source, out: _Out) -> None:
    """Always written: secure when the source does not say (duo_unix's default was safe)."""
    entry = src.last("failmode")
    if entry is None:
        out.auth["failmode"] = "secure"
        out.origin["auth.failmode"] = "not set in the source (duo_unix's default was safe)"
        out.note("failmode: not set in the source, and duo_unix's default is \"safe\" (fail open: when Duo could not "
                 "be reached, users got in with their password alone). This config says failmode = \"secure\" (fail "
                 "closed): when Duo cannot be reached, logins are refused. Set \"safe\" only if you accept that risk.", 0)
    elif entry.value in ("safe", "secure"):
        out.auth["failmode"] = entry.value
        out.origin["auth.failmode"] = f"line {entry.line}"
        if entry.value == "safe":
            out.note(f"line {entry.line} (failmode = safe): kept. When Duo cannot be reached (network, DNS, "
                     f"TLS, timeout, 5xx), users get in without a second factor (logged as \"Failsafe Duo login\"). "
                     f"Unlike duo_unix, a configuration error, a 401 (bad keys, clock) or another 4xx never fails open "
                     f"here. Consider failmode = \"secure\".", 0)


def _auth_switches(src: _Source, out: _Out) -> None:
    """autopush, verified_push, accept_env_factor: read together (duo_unix refuses autopush with verified_push)."""
    for name in ("autopush", "verified_push", "accept_env_factor"):
        if name in src.by_name:
            out.auth[name] = _boolean(src.by_name[name], out)
            out.origin[f"auth.{name}"] = f"line {src.by_name[name][-1].line}"
    if out.auth.get("autopush"):
        line = src.by_name["autopush"][-1].line
        out.note(f"line {line} (autopush = yes): one push to the default device, with no menu and no retry (duo_unix "
                 f"pushed again up to prompts times, and login_duo fell back to the menu).", line)
    if out.auth.get("autopush") and out.auth.get("verified_push"):
        out.note("autopush and verified_push are both on: duo_unix refuses that (\"autopush and verified_push cannot "
                 "both be enabled\") and so does this config; turn one of them off.", 1)
    if out.auth.get("accept_env_factor") and src.program == "pam_duo":
        line = src.by_name["accept_env_factor"][-1].line
        out.note(f"line {line} (accept_env_factor = yes): pam_duo ignored this option; here too it only affects the "
                 f"ForceCommand wrapper pam-duo-login.", line)


def _pushinfo(src: _Source, out: _Out) -> None:
    """duo_unix's pushinfo (the command in the push) is our auth.pushinfo_command."""
    entry = src.last("pushinfo")
    if entry is None:
        return
    out.auth["pushinfo_command"] = _boolean(src.by_name["pushinfo"], out)
    out.origin["auth.pushinfo_command"] = f"line {entry.line} (pushinfo)"
    if out.auth["pushinfo_command"]:
        out.note(f"line {entry.line} (pushinfo = yes): becomes auth.pushinfo_command = true (duo_unix's pushinfo "
                 f"added the command to the push); auth.pushinfo, which sends the host name, PAM service and "
                 f"remote address, stays true.", entry.line)


def _prompts(src: _Source, out: _Out) -> None:
    """atoi, <= 0 counts as 1, and each line only lowers the starting value 3."""
    if "prompts" not in src.by_name:
        return
    effective = 3
    for entry in src.by_name["prompts"]:
        number, plain = _atoi(entry.value)
        clamped = max(1, number)
        if not plain or not 1 <= number <= 3:
            out.note(f"line {entry.line} (prompts = {_safe(entry.value, 20)}): duo_unix reads it as {number} and "
                     f"uses {min(3, clamped)} (its range is 1 to 3, and ours too).", entry.line)
        effective = min(effective, clamped)
    out.auth["prompts"] = effective
    out.origin["auth.prompts"] = f"{_lines(src.by_name['prompts'])}"


def _https_timeout(src: _Source, out: _Out) -> None:
    """duo.timeout: every call here has a deadline, where duo_unix could wait without one."""
    entry = src.last("https_timeout")
    if entry is None:
        out.duo["timeout"] = DEFAULT_TIMEOUT
        out.origin["duo.timeout"] = "our default (https_timeout not set: duo_unix had no timeout)"
        out.note(f"https_timeout: not set, so duo_unix waited for Duo's answers without a limit. Every Duo call here "
                 f"has a deadline: duo.timeout = {DEFAULT_TIMEOUT} (our default).", 5000)
        return
    number, plain = _atoi(entry.value)
    if number <= 0:
        out.duo["timeout"] = DEFAULT_TIMEOUT
        out.origin["duo.timeout"] = f"our default (https_timeout on line {entry.line} meant no timeout)"
        out.note(f"line {entry.line} (https_timeout = {_safe(entry.value, 20)}): duo_unix reads that as no "
                 f"timeout at all. Every Duo call here has a deadline: duo.timeout = {DEFAULT_TIMEOUT} (our "
                 f"default).", entry.line)
        return
    timeout = min(number, MAX_TIMEOUT)
    out.duo["timeout"] = timeout
    out.origin["duo.timeout"] = f"line {entry.line} (https_timeout)"
    extra = ""
    if not plain:
        extra += f" duo_unix read {_safe(entry.value, 20)} as {number}."
    if number > MAX_TIMEOUT:
        extra += f" {number} is more than our limit, so {MAX_TIMEOUT}."
    out.note(f"line {entry.line} (https_timeout = {number}): duo.timeout = {timeout}. Ours is one deadline for "
             f"the whole call, connect and TLS handshake included; duo_unix's limited only the wait for "
             f"Duo's answer.{extra}", entry.line)


def _http_proxy(src: _Source, out: _Out) -> None:
    entry = src.last("http_proxy")
    if entry is None:
        return
    if entry.value == "":
        out.note(f"line {entry.line} (http_proxy): empty; no proxy.", entry.line)
        return
    proxy = _proxy(entry, out)
    if proxy is not None:
        out.duo["proxy"] = proxy
        out.origin["duo.proxy"] = f"line {entry.line} (http_proxy)"


def _tls_verification(src: _Source, out: _Out) -> None:
    """noverify and cafile: verification is never turned off; duo_unix ignored cafile under noverify."""
    noverify = _boolean(src.by_name["noverify"], out) if "noverify" in src.by_name else False
    cafile = src.last("cafile")
    if noverify:
        entry = src.by_name["noverify"][-1]
        keep = ""
        if cafile is not None and cafile.value:
            keep = f" duo.ca_file is set from cafile (line {cafile.line}), which duo_unix ignored while noverify was on."
        out.note(f"line {entry.line} (noverify = yes): not carried. duo_unix did not check Duo's TLS certificate, so "
                 f"anyone on the network path could impersonate Duo; verification cannot be turned off here.{keep} "
                 f"If Duo is reached through a TLS-inspecting proxy or a private CA, put that CA's PEM bundle in "
                 f"duo.ca_file; until then such connections fail"
                 + (" and, with failmode safe, let users in without Duo." if out.auth.get("failmode") == "safe" else "."),
                 entry.line)
    if cafile is None:
        return
    if cafile.value == "":
        out.note(f"line {cafile.line} (cafile = <empty>): an empty cafile turned TLS certificate verification off in "
                 f"duo_unix. Not carried: verification cannot be turned off here; duo.ca_file is left empty, which "
                 f"means the Duo CA bundle shipped with duo-client.", cafile.line)
    elif not os.path.isabs(cafile.value):
        out.refuse(cafile.line, f"cafile {_safe(cafile.value)} is a relative path, which duo_unix resolved "
                                f"against the working directory of whatever program loaded it; duo.ca_file must "
                                f"be absolute: give the full path")
    else:
        out.duo["ca_file"] = cafile.value
        out.origin["duo.ca_file"] = f"line {cafile.line} (cafile)"


def _group_tokens(group_entries: list[_Entry], out: _Out) -> list[str]:
    """Every line's tokens together, as duo_unix collects them, up to its limit."""
    tokens: list[str] = []
    for entry in group_entries:
        for token in _split_groups(entry.value):
            if len(tokens) >= MAX_GROUP_TOKENS:
                out.refuse(entry.line, f"more than {MAX_GROUP_TOKENS} group patterns: duo_unix refuses this "
                                       f"(\"Exceeded max 256 groups\")", duo_unix_stops=True)
                break
            tokens.append(token)
    return tokens


def _groups(src: _Source, out: _Out) -> None:
    """groups (and its alias group) -> users.groups."""
    group_entries = src.by_name.get("groups", [])
    tokens = _group_tokens(group_entries, out)
    if not tokens:
        return
    patterns, exact, remarks, all_negated = translate_groups(tokens)
    where_groups = f"{_lines(group_entries)} (groups)"
    out.origin["users.groups"] = where_groups.split(" (")[0]
    if all_negated and not patterns:
        out.refuse(group_entries[0].line, "groups has no group pattern at all (only commas); duo_unix treats "
                                          "that as all negated and asks nobody for Duo; write the groups you mean")
    elif all_negated:
        out.groups = patterns
        out.note(f"{where_groups}: every pattern is negated, so duo_unix matched no one and asked NOBODY for Duo "
                 f"(it logged \"All configured groups are negated ...\"). Adding \"*\" would not reproduce that "
                 f"(it would ask everyone else for Duo), so users.groups is kept as written, and this config "
                 f"refuses to load until you decide: [\"*\", " + ", ".join(toml_string(p) for p in patterns) + "] to ask "
                 f"everyone except those groups, or take the module out of the PAM stacks if nobody should do Duo.",
                 2)
    else:
        out.groups = patterns
        verdict = "the same users must do Duo" if exact else "not an exact translation"
        combined = " (the lines combined, as duo_unix does)" if len(group_entries) > 1 else ""
        out.note(f"{where_groups}: users.groups = [" + ", ".join(toml_string(p) for p in patterns) + f"]{combined}: {verdict}."
                 + "".join(f" Note: {r}." for r in remarks)
                 + " Users outside users.groups get PAM_IGNORE here, where duo_unix returned PAM_SUCCESS: use "
                   "one of the PAM stacks in the README.", group_entries[0].line)


_GECOS_OPTIONS = ("send_gecos", "gecos_username_pos", "gecos_delim", "gecos_parsed")


def _gecos(src: _Source, out: _Out) -> None:
    """Not carried: the user can change the GECOS field, so it must not choose the Duo user."""
    gecos = [e for name in _GECOS_OPTIONS for e in src.by_name.get(name, [])]
    if not gecos:
        return
    used = ("send_gecos" in src.by_name and src.by_name["send_gecos"][-1].value in _TRUE) \
        or "gecos_username_pos" in src.by_name
    how = ("duo_unix used the GECOS field, or a part of it, as the Duo user name" if used
           else "in this file they were off or had no effect")
    out.note(f"{_lines(gecos)} (" + ", ".join(sorted({e.name for e in gecos})) + f"): not carried; {how}. The "
             f"GECOS field can be changed by the user (chfn), so it must not decide who they are at Duo: the Duo "
             f"user here is the local name, and users.map_file maps the exceptions, one 'localname duoname' per "
             f"line" + (" (build it from the GECOS fields you relied on)." if used else "."), gecos[0].line)


def _not_carried(name: str, when_on: str | None) -> _Translator:
    """A translator for an option with no counterpart: a note with ``when_on`` (None: whatever its value)."""

    def translate(src: _Source, out: _Out) -> None:
        entry = src.last(name)
        if entry is None:
            return
        if when_on is None:
            text = "not carried: it had no effect in duo_unix either (FIPS mode is a system-wide OpenSSL setting)"
        elif entry.value in _TRUE:
            text = "not carried: " + when_on
        else:
            text = "not carried (it was off, nothing changes)"
        out.note(f"{_lines(src.by_name[name])} ({name}): {text}.", entry.line)

    return translate


# Option names (one, or those duo_unix reads together) -> translator. The order is the order in
# which notes of equal rank are listed. "group" is read as "groups".
_TRANSLATORS: dict[tuple[str, ...], _Translator] = {
    ("ikey", "skey", "host"): _duo_keys,
    ("failmode",): _failmode,
    ("autopush", "verified_push", "accept_env_factor"): _auth_switches,
    ("pushinfo",): _pushinfo,
    ("prompts",): _prompts,
    ("https_timeout",): _https_timeout,
    ("http_proxy",): _http_proxy,
    ("noverify", "cafile"): _tls_verification,
    ("groups",): _groups,
    _GECOS_OPTIONS: _gecos,
    ("fallback_local_ip",): _not_carried(
        "fallback_local_ip", "duo_unix sent this server's own address to Duo as the client's when the client "
        "address was not an IP literal; we never send this server's address as the client's (such logins "
        "go to Duo without a client address)"),
    ("motd",): _not_carried(
        "motd", "pam-duo-login does not print /etc/motd; let sshd (PrintMotd) or pam_motd show it"),
    ("dev_fips_mode",): _not_carried("dev_fips_mode", None),
}


def _translate(entries: list[_Entry], out: _Out, program: str | None, where: str) -> None:
    by_name: dict[str, list[_Entry]] = {}
    for entry in entries:
        by_name.setdefault("groups" if entry.name == "group" else entry.name, []).append(entry)
    src = _Source(by_name, program, where)
    _refuse_bad_values(entries, out)
    _note_repeats(src, out)
    _note_quotes(entries, out)
    for translate in _TRANSLATORS.values():
        translate(src, out)


# --------------------------------------------------------------------------------------------
# Writing the TOML


def _render(out: _Out, source_name: str, notes: list[str]) -> str:
    def origin(key: str, default: str = "our default; not set in the source") -> str:
        text = out.origin.get(key, default)
        return f"# from duo_unix {text}" if text.startswith("line") else f"# {text}"

    def boolean(value: object) -> str:
        return "true" if value else "false"

    lines = [
        f"# pam_duo_py configuration converted from the duo_unix config {_comment_text(source_name)}",
        "# by \"pam-duo-py import-duo-unix\". Every key is documented in the example config shipped with",
        "# pam_duo_py (etc/pam_duo.toml). Keep this file owned by root, mode 0600 (it holds the secret key),",
        f"# install it as {DEFAULT_PATH}, and check it with:  pam-duo-py -c FILE check",
    ]
    if notes:
        lines += ["#", "# Conversion notes:"]
        for note in notes:
            wrapped = textwrap.wrap(_comment_text(note), width=96, break_long_words=True, break_on_hyphens=False)
            lines += ["#   - " + wrapped[0]] + ["#     " + w for w in wrapped[1:]]
    lines += ["", "[duo]", "# Integration key, secret key and API host of the \"UNIX Application\" in the Duo Admin Panel."]
    for name in ("ikey", "skey", "host"):
        if name in out.duo:
            lines.append(f"{name} = {toml_string(str(out.duo[name]))}   # from duo_unix {out.origin[f'duo.{name}']}")
        else:
            lines.append(f"# {name} = \"...\"   # REQUIRED: missing or empty in the source")
    lines += [
        "# Or keep the secret key in its own file (root, 0600) instead of skey:",
        "# skey_file = \"/etc/pam_duo_py/skey\"",
        "",
        "# PEM bundle of CAs to trust for the Duo API. Empty: the Duo CA bundle shipped with duo-client.",
        "# TLS verification cannot be turned off.",
        origin("duo.ca_file"),
        f"ca_file = {toml_string(str(out.duo.get('ca_file', '')))}",
        "",
        "# HTTP CONNECT proxy, \"http://[user:password@]host:port\". Empty: connect directly.",
        origin("duo.proxy"),
        f"proxy = {toml_string(str(out.duo.get('proxy', '')))}",
        "",
        "# Overall deadline in seconds for each Duo API call, connect and TLS handshake included (>= 0.1).",
        origin("duo.timeout"),
        f"timeout = {out.duo.get('timeout', DEFAULT_TIMEOUT)}",
        "",
        "[auth]",
        "# \"secure\": refuse logins when Duo cannot be reached; \"safe\": let users in without Duo then.",
        origin("auth.failmode"),
        f"failmode = {toml_string(str(out.auth.get('failmode', 'secure')))}",
        "",
        "# true: one push to the default device, without the menu.",
        origin("auth.autopush"),
        f"autopush = {boolean(out.auth.get('autopush', False))}",
        "",
        "# Interactive attempts before giving up: 1 to 3.",
        origin("auth.prompts"),
        f"prompts = {out.auth.get('prompts', 3)}",
        "",
        "# Seconds to wait for a push, phone call or Verified Push to be answered.",
        "# our default; duo_unix has no such setting",
        "push_timeout = 75",
        "",
        "# Send the host name, PAM service and remote address with pushes.",
        "# our default (duo_unix always sent the server's address)",
        "pushinfo = true",
        "",
        "# Also send the command being run (sudo, SSH_ORIGINAL_COMMAND), cut to 100 characters.",
        origin("auth.pushinfo_command"),
        f"pushinfo_command = {boolean(out.auth.get('pushinfo_command', False))}",
        "",
        "# Tell Duo this client can show a Verified Push code (cannot be combined with autopush).",
        origin("auth.verified_push"),
        f"verified_push = {boolean(out.auth.get('verified_push', False))}",
        "",
        "# ForceCommand wrapper only: accept a passcode from $DUO_PASSCODE.",
        origin("auth.accept_env_factor"),
        f"accept_env_factor = {boolean(out.auth.get('accept_env_factor', False))}",
        "",
        "[users]",
        "# Which users must do Duo; empty: everyone. A user must do Duo when one of their groups matches a",
        "# positive pattern (* and ? wildcards) and none matches a negated one (\"!name\").",
        origin("users.groups"),
        "groups = [" + ", ".join(toml_string(p) for p in out.groups) + "]",
        "",
        "# Optional map from local user to Duo user, one \"localname duoname\" per line.",
        "# our default; duo_unix has no such file",
        "map_file = \"\"",
        "",
        "[log]",
        "# Optional JSON-lines audit file (one line per decision), created 0600.",
        "audit_file = \"\"",
        "",
        "[broker]",
        "# Unix socket of the broker used by pam-duo-login (in a root-owned directory).",
        f"socket = {toml_string(DEFAULT_SOCKET)}",
        "",
    ]
    return "\n".join(lines)


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "<hidden>")
    return text


def _self_check(toml_text: str) -> list[str]:
    try:
        parse_config(toml_text, "converted config", read=lambda path, secret: b"-----BEGIN CERTIFICATE-----\n")
    except ConfigError as exc:
        return list(exc.problems)
    return []


def convert(text: str, source_name: str, *, extra_notes: Sequence[str] = ()) -> Conversion:
    """Convert the text of a duo_unix config named ``source_name`` (pure: no I/O).

    Raises :class:`ConversionError` when duo_unix itself would not read the file as written
    (syntax errors, unknown options, invalid values) or when something cannot be carried safely.
    ``extra_notes`` (about the file itself) are put first.
    """
    program = _program(source_name)
    entries, syntax = _parse_ini(text, program)
    out = _Out()
    _translate(entries, out, program, source_name)
    problems = sorted(syntax + out.problems)
    if problems:
        messages = [f"{source_name}, line {n}: {text_}" for n, text_, _ in problems]
        stops = [n for n, _, duo_unix_stops in problems if duo_unix_stops]
        if stops:
            first = stops[0]
            failmode_later = [e for e in entries if e.name == "failmode" and e.line > first]
            failmode_before = [e for e in entries if e.name == "failmode" and e.line < first]
            tail = (f"duo_unix stops reading at line {first} (\"Parse error in {source_name}, line {first}\"), so "
                    f"nothing below it was in effect")
            if failmode_later and not failmode_before:
                tail += (f", including the failmode on line {failmode_later[0].line}: duo_unix used failmode safe "
                         f"and let users in without Duo")
            messages.append(f"{source_name}: {tail}.")
        messages.append(f"{source_name}: not converted; fix the file and run the import again.")
        raise ConversionError([_scrub(m, out.secrets) for m in messages])
    ordered = list(extra_notes) + [text_ for _, text_ in sorted(out.notes, key=lambda item: item[0])]
    toml_draft = _render(out, source_name, [])
    config_problems = [_scrub(p, out.secrets) for p in _self_check(toml_draft)]
    if config_problems:
        ordered.append("The converted config does not load yet; fix: "
                       + "; ".join(p.replace("converted config: ", "", 1) for p in config_problems))
    notes = [_scrub(n, out.secrets) for n in ordered]
    toml_text = _render(out, source_name, notes)
    return Conversion(toml_text=toml_text, notes=notes, config_problems=config_problems)


# --------------------------------------------------------------------------------------------
# The command


def _read_source(src: str) -> tuple[str, list[str]]:
    """Read the source as duo_unix would see it. Returns (text, notes about the file itself)."""
    import stat

    notes: list[str] = []
    fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConversionError([f"{src}: not a regular file"])
        if st.st_size > MAX_SOURCE_SIZE:
            raise ConversionError([f"{src}: larger than {MAX_SOURCE_SIZE} bytes; not a duo_unix config"])
        if st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
            notes.append(f"{src} is readable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): duo_unix refuses "
                         f"to read such a file (\"must be readable only by user ...\") and then used failmode safe, "
                         f"letting every user in without Duo. Its secret key may also have been read by others: "
                         f"consider a new one from the Duo Admin Panel.")
        raw = files.read_all(fd)
    finally:
        os.close(fd)
    return raw.decode("utf-8", "surrogateescape"), notes


def _print(text: str, stream) -> None:
    print(_comment_text(text), file=stream)


def main(src: str, dest: str | None = None) -> int:
    """Convert SRC; TOML to stdout or to DEST (created 0600, never overwritten); notes to stderr."""
    try:
        text, file_notes = _read_source(src)
        result = convert(text, src, extra_notes=file_notes)
    except OSError as exc:
        _print(f"error: cannot read {src}: {exc.strerror}", sys.stderr)
        return 1
    except ConversionError as exc:
        for problem in exc.problems:
            _print(f"error: {problem}", sys.stderr)
        return 1
    notes = result.notes
    if dest:
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            _print(f"error: {dest} already exists; it is never overwritten: choose another name or move it away", sys.stderr)
            return 1
        except OSError as exc:
            _print(f"error: cannot create {dest}: {exc.strerror}", sys.stderr)
            return 1
        try:
            os.fchmod(fd, 0o600)
            data = result.toml_text.encode("utf-8")
            while data:
                written = os.write(fd, data)
                data = data[written:]
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            os.unlink(dest)
            _print(f"error: cannot write {dest}: {exc.strerror}", sys.stderr)
            return 1
        os.close(fd)
    else:
        sys.stdout.write(result.toml_text)
        sys.stdout.flush()
    for note in notes:
        _print(f"note: {note}", sys.stderr)
    if dest:
        _print(f"wrote {dest} (mode 0600); check it with: pam-duo-py -c {dest} check", sys.stderr)
    return 0
