"""pam_duo_py: Duo Security two-factor authentication for Unix logins."""

__version__ = "0.1.0"
