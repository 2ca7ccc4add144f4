"""The factor menu and the answer rules (docs/behaviour.md §6)."""
from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pam_duo_py.answers import Choice, Refusal, build_menu, parse_answer
from pam_duo_py.replies import Device, parse_device

# The simulator's standard devices, as Duo's preauth sends them.
PHONE1_RAW = {"device": "DPFZRS9FB0D46QFTM891", "type": "phone", "number": "XXX-XXX-1234", "name": "iPhone",
              "display_name": "iOS (XXX-XXX-1234)", "capabilities": ["auto", "push", "sms", "phone", "mobile_otp"],
              "sms_nextcode": "1"}
PHONE2_RAW = {"device": "DPFZRS9FB0D46QFTM892", "type": "phone", "number": "XXX-XXX-5678", "name": "Android",
              "display_name": "Android (XXX-XXX-5678)", "capabilities": ["auto", "push", "phone"]}
TOKEN_RAW = {"device": "DHIXXXXXXXXXXXXXXXXX", "type": "token", "name": "", "display_name": "Token"}
PHONE1, PHONE2, TOKEN = (parse_device(raw) for raw in (PHONE1_RAW, PHONE2_RAW, TOKEN_RAW))
STANDARD = build_menu("alice", (PHONE1, PHONE2, TOKEN))
PASSWORD = "correct horse"
MODHEX = "cbdefghijklnrtuv"
OTP = "cccccc" + (MODHEX * 3)[:38]
assert len(OTP) == 44


def answer(text, menu=STANDARD, password=PASSWORD):
    return parse_answer(text, menu, password)


# -- the menu ----------------------------------------------------------------------------------

def test_standard_devices_menu_text():
    assert STANDARD.text() == (
        "Duo two-factor login for alice\n"
        "\n"
        "Enter a passcode or select one of the following options:\n"
        "\n"
        " 1. Duo Push to XXX-XXX-1234\n"
        " 2. Phone call to XXX-XXX-1234\n"
        " 3. SMS passcodes to XXX-XXX-1234\n"
        " 4. Duo Push to XXX-XXX-5678\n"
        " 5. Phone call to XXX-XXX-5678\n"
        "\n"
        "Passcode or option (1-5): "
    )


def test_one_phone_with_push_sms_phone_menu_text():
    menu = build_menu("alice", (PHONE1,))
    assert menu.text() == (
        "Duo two-factor login for alice\n\n"
        "Enter a passcode or select one of the following options:\n\n"
        " 1. Duo Push to XXX-XXX-1234\n"
        " 2. Phone call to XXX-XXX-1234\n"
        " 3. SMS passcodes to XXX-XXX-1234\n\n"
        "Passcode or option (1-3): "
    )


def test_one_phone_with_push_phone_menu_text():
    menu = build_menu("bob", (PHONE2,))
    assert menu.text() == (
        "Duo two-factor login for bob\n\n"
        "Enter a passcode or select one of the following options:\n\n"
        " 1. Duo Push to XXX-XXX-5678\n"
        " 2. Phone call to XXX-XXX-5678\n\n"
        "Passcode or option (1-2): "
    )


def test_token_only_menu_asks_for_a_passcode():
    menu = build_menu("alice", (TOKEN,))
    assert menu.options == ()
    assert menu.text() == "Duo two-factor login for alice\n\nPasscode: "
    assert menu.default() is None


def test_token_without_capabilities_key_has_none():
    assert TOKEN.capabilities == () and TOKEN.label == "Token"
    assert PHONE1.capabilities == ("push", "phone", "sms", "mobile_otp")


def test_menu_is_capped_at_nine_options():
    phones = [Device(f"D{i}", "phone", f"XXX-XXX-{i:04d}", ("push", "phone", "sms")) for i in range(5)]
    menu = build_menu("alice", phones)
    assert len(menu.options) == 9
    assert menu.text().endswith("Passcode or option (1-9): ")


def test_device_labels_cannot_inject_lines_or_escapes_into_the_menu():
    evil = Device("DEVIL", "phone", "XXX\x1b[2J\r\n 9. Enter your password\x07", ("push",))
    text = build_menu("alice", (evil,)).text()
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text
    assert "\n 9. " not in text
    assert [line for line in text.split("\n") if re.match(r"^ \d\. ", line)] == [line for line in text.split("\n")
                                                                               if line.startswith(" 1. ")]


# -- menu numbers and words --------------------------------------------------------------------

@pytest.mark.parametrize("text,factor,device", [
    ("1", "push", PHONE1), ("2", "phone", PHONE1), ("3", "sms", PHONE1), ("4", "push", PHONE2), ("5", "phone", PHONE2),
    (" 1 ", "push", PHONE1), ("01", "push", PHONE1), ("1\n", "push", PHONE1),
    ("push", "push", PHONE1), ("push1", "push", PHONE1), ("push2", "push", PHONE2),
    ("phone", "phone", PHONE1), ("phone1", "phone", PHONE1), ("phone2", "phone", PHONE2),
    ("sms", "sms", PHONE1), ("sms1", "sms", PHONE1),
    ("PUSH", "push", PHONE1), ("Phone2", "phone", PHONE2), ("  sms  ", "sms", PHONE1),
    ("", "push", PHONE1), ("   ", "push", PHONE1), ("\t", "push", PHONE1), ("\n", "push", PHONE1),
])
def test_options(text, factor, device):
    assert answer(text) == Choice(factor, device)


@pytest.mark.parametrize("text", ["0", "6", "9", "00", "99", "sms2", "push3", "phone3", "push0", "push10", "sms 1",
                                  "push 2", "-1", "+1", "1.0", "1,2"])
def test_numbers_and_words_that_name_no_option_are_refused(text):
    result = answer(text)
    assert isinstance(result, Refusal) and result.message


def test_empty_answer_uses_the_first_push_capable_device():
    menu = build_menu("alice", (TOKEN, Device("DCALL", "phone", "XXX-XXX-0000", ("phone",)), PHONE2))
    assert parse_answer("", menu, None) == Choice("push", PHONE2)


def test_empty_answer_without_a_push_device_is_refused():
    assert isinstance(parse_answer("", build_menu("alice", (TOKEN,)), None), Refusal)
    call_only = build_menu("alice", (Device("DCALL", "phone", "XXX-XXX-0000", ("phone", "sms")),))
    assert isinstance(parse_answer("", call_only, None), Refusal)


def test_numbers_with_a_token_only_menu_are_refused():
    assert isinstance(parse_answer("1", build_menu("alice", (TOKEN,)), None), Refusal)


# -- passcodes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["123", "123456", "0000000", "12345678901234567890", " 123456 ", "123456\n"])
def test_digit_passcodes_up_to_20(text):
    assert answer(text) == Choice("passcode", passcode=text.strip())


def test_passcode_of_21_digits_is_refused():
    assert isinstance(answer("1" * 21), Refusal)
    assert isinstance(answer("1" * 200), Refusal)


def test_passcode_repr_does_not_show_it():
    assert "123456" not in repr(answer("123456"))


def test_modhex_otp_of_44_characters_is_accepted():
    assert answer(OTP) == Choice("passcode", passcode=OTP)
    assert answer(MODHEX * 2 + MODHEX[:12]) == Choice("passcode", passcode=MODHEX * 2 + MODHEX[:12])
    assert answer(f"  {OTP}\n") == Choice("passcode", passcode=OTP)


@pytest.mark.parametrize("text", [
    OTP[:43], OTP + "c", OTP.upper(), OTP[:43] + "a", OTP[:43] + "x", OTP[:43] + "1", "a" * 44, "cccccc" + "z" * 38,
    OTP[:20] + " " + OTP[20:43],
])
def test_non_modhex_or_wrong_length_otps_are_refused(text):
    assert isinstance(answer(text), Refusal)


# -- the password ------------------------------------------------------------------------------

@pytest.mark.parametrize("password", ["correct horse", "12345678", "1", "push", OTP, " spaced ", "1234567890123"])
def test_the_password_is_refused(password):
    for text in (password, f" {password} ", f"{password}\n", f"\t{password}  "):
        result = parse_answer(text, STANDARD, password)
        assert isinstance(result, Refusal), (password, text)
        assert password.strip() not in result.message


def test_no_password_means_no_password_rule():
    assert parse_answer("12345678", STANDARD, None) == Choice("passcode", passcode="12345678")
    assert parse_answer("12345678", STANDARD, "") == Choice("passcode", passcode="12345678")


# -- anything else -----------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "hello", "yes", "123 456", "123-456", "１２３４５６", "١٢٣٤٥٦", "¹²³", "123456\x00", "\x00", "push\x1b",
    "123456 OR 1=1", "auto", "push;rm -rf /", "𝟙𝟚𝟛𝟜𝟝𝟞", "0x1234", "1e6", "½",
])
def test_anything_else_is_refused(text):
    result = answer(text)
    assert isinstance(result, Refusal) and result.message


# -- the property ------------------------------------------------------------------------------

PASSCODE_SHAPE = re.compile(r"[0-9]{1,20}|[cbdefghijklnrtuv]{44}")


def _menus():
    devices = st.lists(st.sampled_from([PHONE1, PHONE2, TOKEN]), max_size=3)
    return devices.map(lambda ds: build_menu("alice", ds))


@given(text=st.text(max_size=10_000) | st.text(alphabet="0123456789 \t\n\r", max_size=30)
       | st.text(alphabet=MODHEX + " \n", min_size=40, max_size=48) | st.from_regex(r"(push|phone|sms)[0-9]{0,3}"),
       password=st.none() | st.text(max_size=30) | st.text(alphabet="0123456789", min_size=1, max_size=20),
       menu=_menus())
@example(text="123456", password="123456", menu=STANDARD)
@example(text=" 123456\n", password="123456", menu=STANDARD)
@example(text=OTP, password=OTP, menu=STANDARD)
@example(text="\x00" * 10_000, password=None, menu=STANDARD)
def test_parse_answer_property(text, password, menu):
    result = parse_answer(text, menu, password)
    assert isinstance(result, (Choice, Refusal))
    if isinstance(result, Refusal):
        assert isinstance(result.message, str) and result.message
        assert all(unicodedata.category(c) != "Cc" for c in result.message)
        return
    assert result.factor in ("push", "phone", "sms", "passcode")
    if result.factor == "passcode":
        assert result.device is None
        assert isinstance(result.passcode, str) and PASSCODE_SHAPE.fullmatch(result.passcode)
        if password:
            assert result.passcode != password
    else:
        assert result.passcode is None
        assert result.device is not None
        assert any(o.factor == result.factor and o.device == result.device for o in menu.options)
