"""pam_duo_sim: a local Duo simulator (Auth API v2, Admin API, the old REST v1) for tests and
demos. Not on production hosts: ``scripts/install.sh --with-simulator``, ``scripts/demo`` and
the tests install it; the Debian package does not ship it.

Standard library only; it imports nothing from :mod:`pam_duo_py` or :mod:`pam_duo_tools`.
"""
