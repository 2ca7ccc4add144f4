"""``pam-duo-login``: the SSH ForceCommand wrapper (SPEC §7)."""
from __future__ import annotations

import sys


def main() -> int:
    print("pam-duo-login: the broker is not reachable; login refused", file=sys.stderr)
    return 1
