"""``python3 -m pam_duo_py``: the same command as ``pam-duo-py`` (kept for those who call it so).

Run, never imported: the one place under pam_duo_py/ that names the tools package.
"""
import sys

from pam_duo_tools.cli import main

sys.exit(main())
