"""pam_duo_py: the runtime of Duo two-factor for Unix logins, what a production host runs: the
PAM module (``pam_entry``, ``pam``), the ForceCommand wrapper (``wrapper``), the broker and
what they import.

It never imports :mod:`pam_duo_tools` (the operator's commands) or :mod:`pam_duo_sim`
(the Duo simulator); tests/unit/test_layout.py checks this.
"""

__version__ = "0.1.0"
