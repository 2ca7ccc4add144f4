"""``python3 -m pam_duo_sim``: the same as ``pam-duo-py simulate``."""
import sys

from .simulator import main

sys.exit(main(sys.argv[1:]))
