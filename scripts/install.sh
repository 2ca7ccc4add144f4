#!/usr/bin/env bash
# Install (or remove) pam_duo_py for the system Python that pam_python.so embeds.
#
#   sudo scripts/install.sh              install or update; safe to run again
#   sudo scripts/install.sh --uninstall  remove what this script installed (refused while a
#                                        PAM service or sshd_config still names it; --force)
#   sudo scripts/install.sh --with-pam-examples
#                                        also copy the example PAM services and sshd
#                                        snippets to /usr/local/share/pam_duo_py/
#   sudo scripts/install.sh --with-simulator
#                                        also install the local Duo simulator (pam_duo_sim,
#                                        `pam-duo-py simulate`): a test and demo tool
#
# See --help for what goes where. This script never edits an existing PAM stack.
set -euo pipefail
shopt -s inherit_errexit
umask 022

PREFIX=/usr/local/lib/pam_duo_py
LIB_DIR=$PREFIX/lib
ENTRY=$PREFIX/pam_duo.py
MANIFEST=$PREFIX/MANIFEST
PAM_BACKUP_DIR=$PREFIX/pam.d-backup
BIN_DIR=/usr/local/bin
CMD_CLI=$BIN_DIR/pam-duo-py
CMD_LOGIN=$BIN_DIR/pam-duo-login
ETC_DIR=/etc/pam_duo_py
CONFIG=$ETC_DIR/pam_duo.toml
SYS_PY=/usr/bin/python3
LOCK_FILE=/run/lock/pam_duo_py-install.lock
LOCK_COPY=.requirements.lock   # inside LIB_DIR: the lock file duo-client came from

# Debian packages needed at run time: the PAM bridge, pip for the system
# Python (used only with --target, never touching the distribution's Python),
# and openssl for the local Duo simulator's test certificate.
DEB_PACKAGES=(python3 python3-pip libpam-python openssl)

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
EXAMPLE_CONFIG=$REPO/etc/pam_duo.toml
# --with-pam-examples: etc/pam.d/* and etc/sshd_config.d/* go here, for the administrator to
# copy; never into /etc/pam.d or /etc/ssh.
SHARE_DIR=/usr/local/share/pam_duo_py
EXAMPLE_DIRS=(pam.d sshd_config.d)
WITH_EXAMPLES=0
# --with-simulator: pam_duo_sim goes into the library too (a test and demo tool; without the
# flag an install or update leaves it out, and removes one an earlier run installed).
WITH_SIMULATOR=0
FORCE=0
# Where PAM services and sshd name the entry file or the ForceCommand wrapper (see --uninstall).
PAM_DIR=/etc/pam.d
SSHD_CONFIG=/etc/ssh/sshd_config

SUMMARY=()      # lines printed at the end
NEW_MANIFEST=() # entries recorded by this run
STAGE=""
OLD_LIB=""
POLICY_RC_CREATED=0

usage() {
    cat <<EOF
Usage: scripts/install.sh [--with-pam-examples] [--with-simulator] [--uninstall [--force]] [--help]

Installs pam_duo_py for /usr/bin/python3 (the Python that pam_python.so embeds).
Run it as root from a checkout of the repository; running it again is safe.

  Debian packages   ${DEB_PACKAGES[*]} (only when missing)
  $LIB_DIR   the packages pam_duo_py (the runtime: PAM module,
                    wrapper, broker) and pam_duo_tools (the commands), and
                    the pinned duo-client (requirements.lock), byte-compiled
  $ENTRY   the file named on the PAM line
  $CMD_CLI, $CMD_LOGIN
                    the admin command and the ForceCommand wrapper
  $CONFIG   copied from etc/pam_duo.toml only when absent (0600)
  $MANIFEST   what was installed, for --uninstall

No PAM stack is changed. Add a line such as
  auth required pam_python.so $ENTRY conf=$CONFIG
yourself (see README.md for the two supported stacks).

  --with-pam-examples
                also copy the example PAM services (etc/pam.d: sshd, sudo,
                sudo-i, su, su-l, login) and sshd snippets (etc/sshd_config.d)
                to $SHARE_DIR/{pam.d,sshd_config.d}/ for you to
                review and copy; /etc/pam.d and /etc/ssh are not touched
  --with-simulator
                also install pam_duo_sim, the local Duo simulator behind
                "pam-duo-py simulate" (a test and demo tool, not for
                production hosts; an install without this flag leaves it out)
  --uninstall   remove what this script installed. The config file is kept
                when it differs from the shipped example. Debian packages are
                left installed. Refused while a file in $PAM_DIR, $SSHD_CONFIG
                or $SSHD_CONFIG.d/ still names $ENTRY or
                pam-duo-login (logins through them would fail: remove those
                lines first)
  --force       with --uninstall: remove even so
  --help        show this text
EOF
}

say() { printf '%s\n' "$*"; }
note() { SUMMARY+=("$*"); }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

cleanup() {
    if [[ -n $STAGE && -e $STAGE ]]; then rm -rf -- "$STAGE"; fi
    if [[ -n $OLD_LIB && -e $OLD_LIB ]]; then rm -rf -- "$OLD_LIB"; fi
    if [[ $POLICY_RC_CREATED == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT

sha256_of() { sha256sum -- "$1" | cut -d' ' -f1; }

# A path the product reads as root must be root-owned and not writable by group
# or others, and so must every parent directory.
check_path_secure() {
    local p=$1 owner mode
    while :; do
        if [[ -e $p ]]; then
            owner=$(stat -c %u -- "$p")
            mode=$(stat -c %a -- "$p")
            if [[ $owner != 0 ]]; then
                die "$p is owned by uid $owner, not root; the module refuses such paths"
            fi
            if (( (8#$mode & 8#022) != 0 )); then
                die "$p is writable by group or others (mode $mode); the module refuses such paths"
            fi
        fi
        [[ $p == / ]] && break
        p=$(dirname -- "$p")
    done
}

# ---------------------------------------------------------------- packages
deb_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true) == installed ]]
}

install_deb_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        deb_installed "$pkg" || missing+=("$pkg")
    done
    if (( ${#missing[@]} == 0 )); then
        return 0
    fi
    say "Installing Debian packages: ${missing[*]}"
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        # Containers: keep package scripts from starting services.
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=1
    fi
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    if [[ $POLICY_RC_CREATED == 1 ]]; then
        rm -f /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=0
    fi
    for pkg in "${missing[@]}"; do
        NEW_MANIFEST+=("pkg $pkg")
    done
    note "Debian packages installed: ${missing[*]}"
}

# ---------------------------------------------------------------- utilities
# copy_verified_deps SRC DEST: copy the files that SRC/*.dist-info/RECORD
# lists (and nothing else) to DEST, failing if any is missing or does not have
# the hash pip recorded.
copy_verified_deps() {
    "$SYS_PY" -I - "$1" "$2" <<'PY'
import base64, csv, glob, hashlib, os, shutil, sys
src, dest = (os.path.abspath(p) for p in sys.argv[1:3])
records = glob.glob(os.path.join(src, "*.dist-info", "RECORD"))
if not records:
    sys.exit(1)
files = []
for record in records:
    with open(record, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            if not row:
                continue
            path = os.path.normpath(os.path.join(src, row[0]))
            if not path.startswith(src + "/") or os.path.islink(path):
                sys.exit(1)
            if len(row) >= 2 and row[1]:
                algo, _, want = row[1].partition("=")
                try:
                    with open(path, "rb") as g:
                        digest = hashlib.new(algo, g.read()).digest()
                except (OSError, ValueError):
                    sys.exit(1)
                if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != want:
                    sys.exit(1)
            elif not os.path.isfile(path):
                sys.exit(1)
            files.append(os.path.relpath(path, src))
for rel in files:
    os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
    shutil.copyfile(os.path.join(src, rel), os.path.join(dest, rel))
PY
}

# A digest of a tree: every path with its type, mode and owner, and every
# file's content. Equal digests mean an update would change nothing.
tree_digest() {
    (
        cd -- "$1"
        find . -printf '%y %m %U:%G %p %l\n' | LC_ALL=C sort
        find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum
    ) | sha256sum | cut -d' ' -f1
}

# Swap two directories in one rename(2) when the kernel can (renameat2
# RENAME_EXCHANGE), so there is no moment without a library; otherwise two
# renames. Either way a half-built tree is never live.
swap_dirs() {
    local new=$1 live=$2
    if "$SYS_PY" -I - "$new" "$live" <<'PY' 2>/dev/null
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
rc = libc.renameat2(AT_FDCWD, os.fsencode(sys.argv[1]), AT_FDCWD,
                    os.fsencode(sys.argv[2]), RENAME_EXCHANGE)
sys.exit(0 if rc == 0 else 1)
PY
    then
        OLD_LIB=$new   # the exchanged-out old tree now sits at $new
        STAGE=""
        return 0
    fi
    OLD_LIB=$PREFIX/.lib.old.$$
    mv -T -- "$live" "$OLD_LIB"
    mv -T -- "$new" "$live"
    STAGE=""
}

# install_file SRC DEST MODE: put SRC at DEST (root:root, MODE) by an atomic
# rename, only when content, mode or owner differ. Prints "unchanged",
# "updated" or "created".
install_file() {
    local src=$1 dest=$2 mode=$3 tmp state=created
    if [[ -f $dest && ! -L $dest ]]; then
        if cmp -s -- "$src" "$dest" \
            && [[ $(stat -c '%a %u %g' -- "$dest") == "$mode 0 0" ]]; then
            echo unchanged
            return 0
        fi
        state=updated
    fi
    tmp=$(mktemp "$(dirname -- "$dest")/.$(basename -- "$dest").XXXXXX")
    cat -- "$src" > "$tmp"
    chown root:root -- "$tmp"
    chmod "$mode" -- "$tmp"
    mv -fT -- "$tmp" "$dest"
    echo "$state"
}

# ---------------------------------------------------------------- PAM files
# The install never changes a PAM stack. A future explicit flag that does must
# go through backup_pam_file first, so that --uninstall can put it back.
#
#   >>> PAM STACK EDITS: only behind an explicit flag (none exists yet) <<<
edit_pam_stack() {
    # Reserved for an explicit opt-in flag (for example --enable-pam=SERVICE).
    # Call backup_pam_file "/etc/pam.d/$service" before changing it.
    die "editing PAM stacks is not supported yet; add the line yourself (see --help)"
}

backup_pam_file() {
    local file=$1 name
    name=$(basename -- "$file")
    mkdir -p -m 0700 -- "$PAM_BACKUP_DIR"
    if [[ -e $file ]]; then
        if [[ ! -e $PAM_BACKUP_DIR/$name ]]; then
            cp -p -- "$file" "$PAM_BACKUP_DIR/$name"
        fi
        NEW_MANIFEST+=("pam $file $PAM_BACKUP_DIR/$name")
    else
        NEW_MANIFEST+=("pamnew $file")
    fi
}

restore_pam_files() {
    local kind file backup
    while read -r kind file backup; do
        case $kind in
            pam)
                if [[ -f $backup ]]; then
                    cp -p -- "$backup" "$file"
                    say "restored $file from $backup"
                else
                    say "warning: cannot restore $file: backup $backup is missing" >&2
                fi ;;
            pamnew)
                rm -f -- "$file"
                say "removed $file" ;;
        esac
    done < <(grep -E '^(pam|pamnew) ' "$MANIFEST" || true)
    rm -rf -- "$PAM_BACKUP_DIR"
}

# ---------------------------------------------------------------- manifest
write_manifest() {
    local tmp
    tmp=$(mktemp "$PREFIX/.MANIFEST.XXXXXX")
    {
        echo "# pam_duo_py: what scripts/install.sh installed (read by --uninstall)"
        # This run's entries first, then older ones (packages installed, a config
        # created, PAM files changed by an earlier run); one line per kind+path.
        printf '%s\n' "${NEW_MANIFEST[@]}"
        if [[ -f $MANIFEST ]]; then grep -v '^#' "$MANIFEST" || true; fi
    } | awk '/^#/ { print; next } NF && !seen[$1 " " $2]++' > "$tmp"
    chmod 0644 -- "$tmp"
    if [[ -f $MANIFEST ]] && cmp -s -- "$tmp" "$MANIFEST"; then
        rm -f -- "$tmp"
    else
        mv -fT -- "$tmp" "$MANIFEST"
    fi
}

manifest_has() {
    [[ -f $MANIFEST ]] && grep -qE "^$1 $2( |\$)" "$MANIFEST"
}

# ---------------------------------------------------------------- install
do_install() {
    install_deb_packages "${DEB_PACKAGES[@]}"

    [[ -x $SYS_PY ]] || die "$SYS_PY not found"
    [[ -f $REPO/requirements.lock ]] || die "$REPO/requirements.lock not found"
    [[ -f $REPO/pam_duo_py/__init__.py ]] || die "$REPO/pam_duo_py/__init__.py not found"
    [[ -f $REPO/pam_duo_py/pam_entry.py ]] || die "$REPO/pam_duo_py/pam_entry.py not found"
    [[ -f $REPO/pam_duo_tools/cli.py ]] || die "$REPO/pam_duo_tools/cli.py not found"
    local packages=(pam_duo_py pam_duo_tools)
    if [[ $WITH_SIMULATOR == 1 ]]; then
        [[ -f $REPO/pam_duo_sim/simulator.py ]] || die "$REPO/pam_duo_sim/simulator.py not found"
        packages+=(pam_duo_sim)
    fi

    check_path_secure "$(dirname -- "$PREFIX")"
    check_path_secure "$BIN_DIR"
    check_path_secure /etc

    if [[ ! -d $PREFIX ]]; then
        mkdir -m 0755 -- "$PREFIX"
    fi
    chown root:root -- "$PREFIX"
    chmod 0755 -- "$PREFIX"
    rm -rf -- "$PREFIX"/.lib.new.* "$PREFIX"/.lib.old.*

    # 1. Build the library tree next to its destination.
    STAGE=$(mktemp -d "$PREFIX/.lib.new.XXXXXX")
    if [[ -f $LIB_DIR/$LOCK_COPY ]] && cmp -s -- "$LIB_DIR/$LOCK_COPY" "$REPO/requirements.lock" \
        && copy_verified_deps "$LIB_DIR" "$STAGE"; then
        # Same lock file and every installed file still matches pip's RECORD:
        # reuse those files (no download; works offline). Anything else is dropped.
        say "duo-client: reusing the installed copy (requirements.lock unchanged, files verified)"
        cp -- "$REPO/requirements.lock" "$STAGE/$LOCK_COPY"
    else
        find "$STAGE" -mindepth 1 -delete
        "$SYS_PY" -I -m pip --version > /dev/null 2>&1 || die "$SYS_PY -m pip does not work"
        say "Installing duo-client (requirements.lock) for $SYS_PY"
        "$SYS_PY" -I -m pip install --quiet --no-deps --require-hashes --no-compile \
            --disable-pip-version-check --root-user-action=ignore \
            --target "$STAGE" -r "$REPO/requirements.lock"
        cp -- "$REPO/requirements.lock" "$STAGE/$LOCK_COPY"
    fi

    local f
    while IFS= read -r -d '' f; do
        install -D -m 0644 -- "$REPO/$f" "$STAGE/$f"
    done < <(cd -- "$REPO" && find "${packages[@]}" -name __pycache__ -prune -o -type f -name '*.py' -print0)

    if [[ -n $(find "$STAGE" -type l -print -quit) ]]; then
        die "unexpected symbolic link in the library tree"
    fi
    # Hash-checked .pyc files are reproducible (the same source gives the same
    # bytes), and tracebacks name the installed paths, not the staging dir.
    "$SYS_PY" -I -m compileall -q --invalidation-mode checked-hash \
        -s "$STAGE" -p "$LIB_DIR" "$STAGE" > /dev/null \
        || die "byte-compiling the library failed"
    chown -R root:root -- "$STAGE"
    find "$STAGE" -type d -exec chmod 0755 {} +
    find "$STAGE" -type f -exec chmod 0644 {} +

    # 2. Swap it in, unless it is identical to what is installed.
    if [[ -d $LIB_DIR ]] && [[ $(tree_digest "$STAGE") == $(tree_digest "$LIB_DIR") ]]; then
        rm -rf -- "$STAGE"
        STAGE=""
        note "unchanged  $LIB_DIR"
    elif [[ -d $LIB_DIR ]]; then
        swap_dirs "$STAGE" "$LIB_DIR"
        rm -rf -- "$OLD_LIB"
        OLD_LIB=""
        note "updated    $LIB_DIR"
    else
        mv -T -- "$STAGE" "$LIB_DIR"
        STAGE=""
        note "created    $LIB_DIR"
    fi
    NEW_MANIFEST+=("dir $LIB_DIR")
    if [[ $WITH_SIMULATOR == 1 ]]; then
        note "simulator  $LIB_DIR/pam_duo_sim (pam-duo-py simulate: for tests and demos only)"
    fi

    # 3. The PAM entry file and the two commands.
    local state tmpd
    state=$(install_file "$REPO/pam_duo_py/pam_entry.py" "$ENTRY" 644)
    note "$(printf '%-10s %s' "$state" "$ENTRY")"
    NEW_MANIFEST+=("file $ENTRY")

    tmpd=$(mktemp -d)
    write_command "$tmpd/cli" pam-duo-py "pam_duo_tools.cli"
    write_command "$tmpd/login" pam-duo-login "pam_duo_py.wrapper"
    state=$(install_file "$tmpd/cli" "$CMD_CLI" 755)
    note "$(printf '%-10s %s' "$state" "$CMD_CLI")"
    state=$(install_file "$tmpd/login" "$CMD_LOGIN" 755)
    note "$(printf '%-10s %s' "$state" "$CMD_LOGIN")"
    rm -rf -- "$tmpd"
    NEW_MANIFEST+=("file $CMD_CLI" "file $CMD_LOGIN")

    # 4. The configuration directory and, only when there is none, the config.
    if [[ ! -d $ETC_DIR ]]; then
        mkdir -m 0755 -- "$ETC_DIR"
        chown root:root -- "$ETC_DIR"
        NEW_MANIFEST+=("etcdir $ETC_DIR")
    fi
    check_path_secure "$ETC_DIR"
    if [[ -e $CONFIG || -L $CONFIG ]]; then
        note "kept       $CONFIG (existing configuration, not touched)"
    elif [[ -f $EXAMPLE_CONFIG ]]; then
        local tmpc
        tmpc=$(mktemp "$ETC_DIR/.pam_duo.toml.XXXXXX")   # mktemp: 0600
        cat -- "$EXAMPLE_CONFIG" > "$tmpc"
        chown root:root -- "$tmpc"
        chmod 0600 -- "$tmpc"
        mv -nT -- "$tmpc" "$CONFIG"
        rm -f -- "$tmpc"
        NEW_MANIFEST+=("config $CONFIG $(sha256_of "$CONFIG")")
        note "created    $CONFIG (from etc/pam_duo.toml; edit ikey, skey and host)"
    else
        note "skipped    $CONFIG (etc/pam_duo.toml is not in this checkout)"
    fi

    # 5. Only when asked: the example PAM services and sshd snippets, beside the code.
    if [[ $WITH_EXAMPLES == 1 ]]; then
        install_examples
    fi

    write_manifest

    say ""
    say "pam_duo_py installed:"
    printf '  %s\n' "${SUMMARY[@]}"
    say "No PAM stack was changed. Add to a PAM service, for example:"
    say "  auth required pam_python.so $ENTRY conf=$CONFIG"
}

# install_examples: etc/pam.d/* and etc/sshd_config.d/* to $SHARE_DIR/<same dir>/ (0644).
# They are examples for the administrator to copy: nothing in /etc changes.
install_examples() {
    local sub src dest state
    check_path_secure "$(dirname -- "$SHARE_DIR")"
    # These directories are the product's own: --uninstall removes them once they are empty.
    for dest in "$SHARE_DIR" "${EXAMPLE_DIRS[@]/#/$SHARE_DIR/}"; do
        if [[ ! -d $dest ]]; then
            mkdir -m 0755 -- "$dest"
        fi
        chown root:root -- "$dest"
        chmod 0755 -- "$dest"
        NEW_MANIFEST+=("sharedir $dest")
    done
    for sub in "${EXAMPLE_DIRS[@]}"; do
        [[ -d $REPO/etc/$sub ]] || die "$REPO/etc/$sub not found"
        for src in "$REPO/etc/$sub"/*; do
            [[ -f $src && ! -L $src ]] || continue
            dest=$SHARE_DIR/$sub/$(basename -- "$src")
            state=$(install_file "$src" "$dest" 644)
            note "$(printf '%-10s %s' "$state" "$dest")"
            NEW_MANIFEST+=("example $dest")
        done
    done
    note "examples   copy what you need from $SHARE_DIR to /etc/pam.d and /etc/ssh/sshd_config.d yourself"
}

# write_command FILE NAME MODULE
write_command() {
    cat > "$1" <<EOF
#!/usr/bin/python3 -I
# $2: installed by pam_duo_py's scripts/install.sh; do not edit.
import sys; sys.path.insert(0, "$LIB_DIR")
from $3 import main; sys.exit(main())
EOF
}

# ---------------------------------------------------------------- uninstall
# files_still_using: each PAM service and sshd config file with a line (comments aside) that
# names the entry file or the ForceCommand wrapper.
files_still_using() {
    local f
    for f in "$PAM_DIR"/* "$SSHD_CONFIG" "$SSHD_CONFIG.d"/*; do
        [[ -f $f ]] || continue
        # (no grep -q: with pipefail, sed killed by SIGPIPE would hide a match)
        if sed 's/#.*//' -- "$f" | grep -F -e "$ENTRY" -e pam-duo-login > /dev/null; then
            printf '%s\n' "$f"
        fi
    done
}

do_uninstall() {
    if [[ ! -f $MANIFEST ]]; then
        say "pam_duo_py: nothing to remove ($MANIFEST not found)."
        return 0
    fi
    local users=()
    mapfile -t users < <(files_still_using)
    if (( ${#users[@]} > 0 )); then
        if [[ $FORCE != 1 ]]; then
            {
                say "install.sh: error: refusing to uninstall: these files still name $ENTRY or pam-duo-login,"
                say "and every login through them would fail (administrators included):"
                printf '  %s\n' "${users[@]}"
                say "Remove those lines first, or run again with --uninstall --force."
            } >&2
            exit 1
        fi
        note "warning    removed although still named in: ${users[*]}"
    fi
    restore_pam_files

    local path
    while read -r path; do
        if [[ -e $path || -L $path ]]; then
            rm -f -- "$path"
            note "removed    $path"
        fi
    done < <(awk '$1 == "example" { print $2 }' "$MANIFEST")
    while read -r path; do   # deepest first, and only when empty
        if [[ -d $path ]] && rmdir -- "$path" 2>/dev/null; then
            note "removed    $path"
        fi
    done < <(awk '$1 == "sharedir" { print $2 }' "$MANIFEST" | LC_ALL=C sort -r)
    for path in "$CMD_CLI" "$CMD_LOGIN" "$ENTRY"; do
        if manifest_has file "$path" && [[ -e $path || -L $path ]]; then
            rm -f -- "$path"
            note "removed    $path"
        fi
    done
    if manifest_has dir "$LIB_DIR" && [[ -d $LIB_DIR ]]; then
        OLD_LIB=$PREFIX/.lib.old.$$
        mv -T -- "$LIB_DIR" "$OLD_LIB"
        rm -rf -- "$OLD_LIB"
        OLD_LIB=""
        note "removed    $LIB_DIR"
    fi
    rm -rf -- "$PREFIX"/.lib.new.* "$PREFIX"/.lib.old.*

    local recorded current
    if [[ -e $CONFIG ]]; then
        recorded=$(awk -v p="$CONFIG" '$1 == "config" && $2 == p { print $3; exit }' "$MANIFEST")
        current=$(sha256_of "$CONFIG")
        if [[ -z $recorded ]]; then
            note "kept       $CONFIG (it was there before the install)"
        elif [[ $current == "$recorded" ]] \
            || { [[ -f $EXAMPLE_CONFIG ]] && [[ $current == $(sha256_of "$EXAMPLE_CONFIG") ]]; }; then
            rm -f -- "$CONFIG"
            note "removed    $CONFIG (unchanged shipped example)"
        else
            note "kept       $CONFIG (changed by the administrator; remove it by hand if unwanted)"
        fi
    fi
    if manifest_has etcdir "$ETC_DIR" && [[ -d $ETC_DIR ]]; then
        if rmdir -- "$ETC_DIR" 2>/dev/null; then
            note "removed    $ETC_DIR"
        else
            note "kept       $ETC_DIR (not empty)"
        fi
    fi

    local pkgs
    pkgs=$(awk '$1 == "pkg" { printf "%s ", $2 }' "$MANIFEST")
    rm -f -- "$MANIFEST"
    if rmdir -- "$PREFIX" 2>/dev/null; then
        note "removed    $PREFIX"
    elif [[ -d $PREFIX ]]; then
        note "kept       $PREFIX (contains files this script did not install)"
    fi
    if [[ -n $pkgs ]]; then
        note "Debian packages installed earlier are left in place: ${pkgs% }"
    fi

    say "pam_duo_py uninstalled:"
    printf '  %s\n' "${SUMMARY[@]}"
}

# ---------------------------------------------------------------- main
main() {
    local mode=install
    while (( $# > 0 )); do
        case $1 in
            --uninstall) mode=uninstall ;;
            --with-pam-examples) WITH_EXAMPLES=1 ;;
            --with-simulator) WITH_SIMULATOR=1 ;;
            --force) FORCE=1 ;;
            -h|--help) usage; exit 0 ;;
            *) printf 'install.sh: unknown argument: %s\n\n' "$1" >&2; usage >&2; exit 2 ;;
        esac
        shift
    done
    if [[ $FORCE == 1 && $mode != uninstall ]]; then
        printf 'install.sh: --force goes with --uninstall\n\n' >&2; usage >&2; exit 2
    fi
    [[ $(id -u) == 0 ]] || die "must be run as root (sudo scripts/install.sh)"

    # One install at a time.
    mkdir -p -- "$(dirname -- "$LOCK_FILE")"
    exec 9> "$LOCK_FILE"
    flock 9

    if [[ $mode == uninstall ]]; then
        do_uninstall
    else
        do_install
    fi
}

main "$@"
