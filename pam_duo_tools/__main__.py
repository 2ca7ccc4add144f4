"""``python3 -m pam_duo_tools``: the same command as ``pam-duo-py``."""
import sys

from .cli import main

sys.exit(main())
