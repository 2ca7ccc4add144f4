"""The factor menu and what a typed answer means (docs/behaviour.md §6).

Pure functions: no I/O, so the rules about what may be sent to Duo are tested directly.
"""
from __future__ import annotations

import re

from .record import Record
from .replies import Device
from .text import for_display

# Compiled on first use (re caches them): a login that asks nothing does not pay for them.
_WORD = r"^(push|phone|sms)([1-9][0-9]?)?$"
_DIGITS = r"^[0-9]{1,20}$"
_YUBIKEY = r"^[cbdefghijklnrtuv]{44}$"
_LABELS = {"push": "Duo Push to {}", "phone": "Phone call to {}", "sms": "SMS passcodes to {}"}
MAX_OPTIONS = 9


class Option(Record):
    factor: str  # push | phone | sms
    device: Device

    @property
    def label(self) -> str:
        # The label comes from Duo: no control characters, and no line breaks that could forge menu lines.
        return _LABELS[self.factor].format(for_display(self.device.label, limit=100).replace("\n", " "))


class Menu(Record):
    user: str
    options: tuple[Option, ...]

    def text(self) -> str:
        lines = [f"Duo two-factor login for {self.user}", ""]
        if self.options:
            lines += ["Enter a passcode or select one of the following options:", ""]
            lines += [f" {i}. {option.label}" for i, option in enumerate(self.options, start=1)]
            lines += ["", f"Passcode or option (1-{len(self.options)}): "]
        else:
            lines += ["Passcode: "]
        return "\n".join(lines)

    def default(self) -> Option | None:
        """The default answer: push to the first push-capable device."""
        return next((o for o in self.options if o.factor == "push"), None)

    def by_word(self, factor: str, number: int | None) -> Option | None:
        """``push``/``phone``/``sms`` with an optional 1-based number among the devices able to do it."""
        matches = [o for o in self.options if o.factor == factor]
        index = (number or 1) - 1
        return matches[index] if 0 <= index < len(matches) else None


def build_menu(user: str, devices: tuple[Device, ...] | list[Device]) -> Menu:
    options = [Option(factor, device) for device in devices for factor in ("push", "phone", "sms") if factor in device.capabilities]
    return Menu(user=user, options=tuple(options[:MAX_OPTIONS]))


class Choice(Record, hidden=("passcode",)):
    """A usable answer: a factor on a device, or a passcode."""

    factor: str  # push | phone | sms | passcode
    device: Device | None = None
    passcode: str | None = None


class Refusal(Record):
    """An answer refused locally; never sent to Duo."""

    message: str


def parse_answer(answer: str, menu: Menu, password: str | None) -> Choice | Refusal:
    """What the user's answer asks for. Anything unexpected is refused without contacting Duo."""
    if password and answer == password:
        return Refusal("That answer looks like your password, so it was not sent to Duo. Enter a passcode or an option number.")
    text = answer.strip()
    if text == "":
        option = menu.default()
        if option is None:
            return Refusal("There is no default option: enter a passcode.")
        return Choice(option.factor, option.device)
    if password and text == password:
        return Refusal("That answer looks like your password, so it was not sent to Duo. Enter a passcode or an option number.")
    if text.isascii() and text.isdigit() and len(text) <= 2:
        if not 1 <= int(text) <= len(menu.options):
            return Refusal(f"There is no option {text}. Enter a passcode or an option number.")
        option = menu.options[int(text) - 1]
        return Choice(option.factor, option.device)
    word = re.match(_WORD, text.lower()) if text.isascii() else None
    if word:
        option = menu.by_word(word.group(1), int(word.group(2)) if word.group(2) else None)
        if option is None:
            return Refusal(f"No device can do '{text.lower()}'. Enter a passcode or an option number.")
        return Choice(option.factor, option.device)
    if text.isascii() and (re.match(_DIGITS, text) or re.match(_YUBIKEY, text)):
        return Choice("passcode", passcode=text)
    return Refusal("Invalid answer: enter a passcode (digits) or an option number.")
