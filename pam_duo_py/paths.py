"""Default paths, in a module of their own so that the login hot path can import them cheaply."""

DEFAULT_CONFIG = "/etc/pam_duo_py/pam_duo.toml"
DEFAULT_SOCKET = "/run/pam_duo_py/broker.sock"
DEFAULT_ADMIN_CONFIG = "/etc/pam_duo_py/admin.toml"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
