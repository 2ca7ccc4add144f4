"""The file rule, in one place.

Every file the product reads or writes with privileges (config, skey_file,
map_file, ca_file, audit and state files) must be owned by a trusted user and
not writable by group or others, and so must every directory above it; it is
opened without following symlinks. Trusted users are root and the effective
user (so that a developer can run the tools on their own files; under sudo the
effective user is root, so only root counts).

A world-writable directory is accepted only when its sticky bit is set and the
entry below it is owned by a trusted user: then nobody else can rename or
replace that entry (this is what makes ``/tmp/<root-owned dir>`` safe).
"""

import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only
    from .errors import FileRuleError

MAX_SIZE = 1 << 20


def _refused(path: str, reason: str) -> "FileRuleError":
    """The error for ``path`` failing the rule. The exception tree is imported only here: a login
    through the broker checks the socket directory (:func:`socket_directory_problem`) and no more."""
    from .errors import FileRuleError

    return FileRuleError(path, reason)


def trusted_uids() -> frozenset[int]:
    return frozenset({0, os.geteuid()})


def _owner_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)


def check_directories(path: str) -> None:
    """Check every directory above ``path`` (the file itself is checked by its opener)."""
    trusted = trusted_uids()
    if not os.path.isabs(path):
        raise _refused(path, "path must be absolute")
    parent = os.path.realpath(os.path.dirname(path))
    # Symlinks on the way (e.g. /lib -> usr/lib) must themselves belong to a trusted user.
    lexical = os.path.dirname(path)
    while lexical not in ("/", ""):
        try:
            st = os.lstat(lexical)
        except OSError as exc:
            raise _refused(path, f"cannot inspect {lexical}: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in trusted:
            raise _refused(path, f"{lexical} is a symlink owned by {_owner_name(st.st_uid)}")
        lexical = os.path.dirname(lexical)
    child_uid: int | None = None
    current = parent
    while True:
        try:
            st = os.stat(current)
        except OSError as exc:
            raise _refused(path, f"cannot inspect {current}: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise _refused(path, f"{current} is not a directory")
        if st.st_uid not in trusted:
            raise _refused(path, f"directory {current} is owned by {_owner_name(st.st_uid)}, not root")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            sticky_ok = st.st_mode & stat.S_ISVTX and child_uid is not None and child_uid in trusted
            if not sticky_ok:
                raise _refused(path, f"directory {current} is writable by group or others")
        if current == "/":
            return
        child_uid = st.st_uid
        current = os.path.dirname(current)


def _check_fd(path: str, fd: int, *, secret: bool, private: bool = False) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _refused(path, "not a regular file")
    if st.st_uid not in trusted_uids():
        raise _refused(path, f"owned by {_owner_name(st.st_uid)}, must be owned by root")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise _refused(path, f"mode {stat.S_IMODE(st.st_mode):04o} is writable by group or others")
    if secret and st.st_mode & (stat.S_IRWXO | stat.S_IRGRP | stat.S_IWGRP | stat.S_IXGRP):
        raise _refused(path, f"mode {stat.S_IMODE(st.st_mode):04o}: a file holding a secret key must be mode 0600")
    if private and st.st_mode & stat.S_IRWXO:
        raise _refused(path, f"mode {stat.S_IMODE(st.st_mode):04o} is readable by others (0640 at most)")
    return st


def _open_error(path: str, exc: OSError) -> "FileRuleError":
    import errno

    if exc.errno == errno.ELOOP:
        return _refused(path, "is a symlink (symlinks are not followed)")
    if exc.errno == errno.ENOENT:
        return _refused(path, "no such file")
    return _refused(path, f"cannot open: {exc.strerror}")


def read_checked(path: str, *, secret: bool = False) -> bytes:
    """Read a whole file after checking it and its directories. ``secret``: must not be readable by others."""
    return read_checked_stat(path, secret=secret)[0]


def read_checked_stat(path: str, *, secret: bool = False, private: bool = False) -> tuple[bytes, os.stat_result]:
    """:func:`read_checked`, also returning the file's status. ``private``: others may not read it (group may)."""
    check_directories(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise _open_error(path, exc) from None
    try:
        st = _check_fd(path, fd, secret=secret, private=private)
        if st.st_size > MAX_SIZE:
            raise _refused(path, f"larger than {MAX_SIZE} bytes")
        return read_all(fd), st
    finally:
        os.close(fd)


def read_all(fd: int) -> bytes:
    """Everything left to read from an open file descriptor."""
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def check_append_target(path: str) -> None:
    """The checks of :func:`open_append_checked`, without creating or writing anything.

    The directories must pass; the file must pass when it exists (it is created 0600 otherwise).
    """
    check_directories(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _open_error(path, exc) from None
    try:
        _check_fd(path, fd, secret=True)
    finally:
        os.close(fd)


def open_append_checked(path: str) -> int:
    """Open (creating 0600) a file for appending, after the same checks. Returns a file descriptor."""
    check_directories(path)
    try:
        # O_NONBLOCK: a FIFO at the path must be refused, not block the login forever.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        raise _open_error(path, exc) from None
    try:
        _check_fd(path, fd, secret=True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_atomic(path: str, data: bytes) -> None:
    """Replace a state file atomically (0600), after checking its directory.

    The data goes to a new temporary file in the same directory (a random name
    created with ``O_EXCL``, as ``tempfile.mkstemp`` does, without importing
    tempfile on the login path), written whole (a short write is continued),
    fsynced and renamed over ``path``. On any failure the temporary file is
    removed, so a full disk leaves nothing behind and later writes still work.
    """
    check_directories(path)
    directory, name = os.path.split(path)
    fd, tmp = _create_temporary(directory, name)
    try:
        try:
            _write_whole(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _sync_directory(directory)


def _create_temporary(directory: str, name: str) -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {name} in {directory}")


def _write_whole(fd: int, data: bytes) -> None:
    import errno

    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "the write made no progress")
        view = view[written:]


def _sync_directory(directory: str) -> None:
    """Make the rename durable; a directory that cannot be synced is not an error."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def socket_directory_problem(path: str) -> str | None:
    """Why the directory of the broker socket ``path`` cannot be trusted, or None.

    It must be root's and not writable by group or others, or a user could stand
    in for the broker. Raises OSError when the directory cannot be inspected.
    """
    directory = os.path.dirname(path) or "/"
    st = os.stat(directory)
    if st.st_uid != 0:
        return f"{directory} is not owned by root"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{directory} is writable by group or others"
    return None
