"""pam_duo_tools: the operator's commands (``pam-duo-py``: check, admin, audit, metrics,
import-duo-unix). They run when an administrator or a timer calls them, never on a login.

Tools may import the runtime (:mod:`pam_duo_py`); the runtime never imports tools.
"""
