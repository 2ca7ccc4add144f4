"""The privileged broker for pam-duo-login (SPEC §7)."""
from __future__ import annotations

import sys


def main(config_path: str) -> int:
    print("pam-duo-py broker: not available in this version", file=sys.stderr)
    return 1
