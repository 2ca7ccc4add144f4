"""The file named on the PAM line (installed as /usr/local/lib/pam_duo_py/pam_duo.py).

pam_python executes this file as a module that is not in sys.modules and does
not put its directory on sys.path, so it stays a thin shim: it puts the
installed library directory first on sys.path and re-exports the pam_sm_*
functions of the real package. If even the import fails, every entry point
answers PAM_SERVICE_ERR: a broken install never lets anyone in.
"""
import sys

LIB_DIR = "/usr/local/lib/pam_duo_py/lib"

# The installer byte-compiles the library; a login never writes into it (root could,
# and stray files would keep a package upgrade from removing the old directory).
sys.dont_write_bytecode = True
if LIB_DIR not in sys.path:
    sys.path.insert(0, LIB_DIR)

try:
    from pam_duo_py.pam import (  # noqa: F401
        pam_sm_acct_mgmt,
        pam_sm_authenticate,
        pam_sm_chauthtok,
        pam_sm_close_session,
        pam_sm_open_session,
        pam_sm_setcred,
    )
except BaseException:  # noqa: B036 - nothing may escape into pam_python
    import syslog as _syslog
    import traceback as _traceback

    _reason = _traceback.format_exc(limit=3).replace("\n", " | ")

    def _broken(pamh, flags, argv):
        try:
            _syslog.syslog(_syslog.LOG_AUTHPRIV | _syslog.LOG_ERR,
                           "pam_duo_py: cannot load the package: " + _reason)
        except BaseException:
            pass
        try:
            return pamh.PAM_SERVICE_ERR
        except BaseException:
            return 3

    pam_sm_authenticate = pam_sm_setcred = pam_sm_acct_mgmt = _broken
    pam_sm_open_session = pam_sm_close_session = pam_sm_chauthtok = _broken
