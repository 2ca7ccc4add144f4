"""``python3 -m pam_duo_py``: the same command as ``pam-duo-py``."""
import sys

from .cli import main

sys.exit(main())
