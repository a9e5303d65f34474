#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian bookworm (or Ubuntu) machine: Debian packages, TimescaleDB built from
# Debian's trixie source package, and the project's virtual environment (.venv). Checks before doing, so a
# second run takes seconds. Never starts, stops or configures the machine's own PostgreSQL or Mosquitto.
#
# Environment:
#   TGW_SETUP_BROWSER=0          skip chromium and chromium-driver (default 1: the console's browser tests need them)
#   TGW_ALLOW_NO_TIMESCALEDB=1   carry on (plain PostgreSQL only) when TimescaleDB cannot be built
#   TGW_SKIP_TIMESCALEDB=1       do not try to build TimescaleDB at all (implies the above)
set -euo pipefail

say() { printf 'setup: %s\n' "$*"; }
warn() { printf 'setup: WARNING: %s\n' "$*" >&2; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
STARTED=$SECONDS

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=(false)  # only fails if something actually has to be installed
fi

APT_LOG="${TMPDIR:-/tmp}/tgw-setup-apt.log"
VENV="$ROOT/.venv"
STAMP="$VENV/.tgw-setup-stamp"
MIN_PY=(3 11)

BASE_PACKAGES=(
    mosquitto mosquitto-clients                   # broker for tests and the demo
    postgresql-15 postgresql-server-dev-15        # database, and headers to build TimescaleDB
    build-essential cmake libssl-dev libkrb5-dev  # TimescaleDB build
    dpkg-dev                                      # dpkg-source, to unpack the trixie source package
    git
)
BROWSER_PACKAGES=(chromium chromium-driver)

# --- Debian packages --------------------------------------------------------------------------------------

is_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) == ii* ]]
}

APT_UPDATED=0
apt_update_once() {
    ((APT_UPDATED)) && return 0
    say "refreshing the apt package lists (apt-get update)"
    "${SUDO[@]}" apt-get -q -o DPkg::Lock::Timeout=300 update >"$APT_LOG" 2>&1 \
        || { tail -n 20 "$APT_LOG" >&2; die "apt-get update failed (network, or a broken entry in /etc/apt/sources.list*)"; }
    APT_UPDATED=1
}

# Run apt-get install without starting the packages' services (we never use the system's PostgreSQL or
# Mosquitto, and in containers they cannot start anyway): a temporary policy-rc.d, unless one exists.
POLICY_RC_D=/usr/sbin/policy-rc.d
apt_install() {
    local made_policy=0
    if [[ ! -e $POLICY_RC_D ]]; then
        printf '#!/bin/sh\n# temporary, from tgw scripts/setup.sh: do not start services\nexit 101\n' \
            | "${SUDO[@]}" tee "$POLICY_RC_D" >/dev/null
        "${SUDO[@]}" chmod 755 "$POLICY_RC_D"
        made_policy=1
        trap '"${SUDO[@]}" rm -f "$POLICY_RC_D"' EXIT
    fi
    local rc=0
    "${SUDO[@]}" apt-get -q -y -o DPkg::Lock::Timeout=300 --no-install-recommends install "$@" \
        >"$APT_LOG" 2>&1 || rc=$?
    ((rc == 0)) || tail -n 30 "$APT_LOG" >&2
    if ((made_policy)); then
        "${SUDO[@]}" rm -f "$POLICY_RC_D"
        trap - EXIT
    fi
    return "$rc"
}

ensure_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "missing packages (${missing[*]}) and no apt-get: Debian or Ubuntu only"
    [[ ${SUDO[0]:-} != false ]] || die "missing packages (${missing[*]}): run as root or install sudo"
    say "installing Debian packages: ${missing[*]}"
    apt_update_once
    for pkg in "${missing[@]}"; do
        if [[ $(apt-cache policy "$pkg" 2>/dev/null | sed -n 's/^ *Candidate: *//p') =~ ^(\(none\))?$ ]]; then
            case $pkg in
                postgresql-15*) die "$pkg is not in this machine's apt sources (Debian bookworm has it; on Ubuntu add the PostgreSQL apt repository, https://wiki.postgresql.org/wiki/Apt)" ;;
                *) die "package $pkg is not available from this machine's apt sources" ;;
            esac
        fi
    done
    local t=$SECONDS
    say "apt-get install (its output goes to $APT_LOG)"
    apt_install "${missing[@]}" || die "apt-get install ${missing[*]} failed; last lines above, all in $APT_LOG"
    for pkg in "${missing[@]}"; do
        is_installed "$pkg" || die "$pkg is still not installed after apt-get install; see $APT_LOG"
    done
    say "Debian packages installed in $((SECONDS - t)) s"
}

# Browser for the console's end-to-end tests (tests/e2e); TGW_SETUP_BROWSER=0 leaves it out.
# Playwright drives this Debian Chromium: Playwright's own browser download is never used.
browser_packages() {
    if [[ ${TGW_SETUP_BROWSER:-1} == 1 ]]; then
        printf '%s\n' "${BROWSER_PACKAGES[@]}"
    fi
}

# --- Python -----------------------------------------------------------------------------------------------

python_is_recent() {  # $1 = interpreter
    "$1" -c "import sys; sys.exit(0 if sys.version_info >= (${MIN_PY[0]}, ${MIN_PY[1]}) else 1)" 2>/dev/null
}

venv_works() {
    [[ -x $VENV/bin/python ]] && python_is_recent "$VENV/bin/python" \
        && "$VENV/bin/python" -c 'import pip' 2>/dev/null
}

# Packages needed to create the venv with the python3 on PATH (Debian splits venv/ensurepip off python3).
python_packages() {
    venv_works && return 0
    local py
    py=$(command -v python3 || true)
    if [[ -z $py ]]; then
        echo python3-venv  # pulls in python3 itself
    elif ! "$py" -c 'import ensurepip, venv' 2>/dev/null && [[ $py == /usr/bin/python3 ]]; then
        echo python3-venv
    fi
}

ensure_venv() {
    local want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if venv_works && [[ -f $STAMP && $(<"$STAMP") == "$want" ]]; then
        say "virtual environment .venv is up to date ($("$VENV/bin/python" --version))"
        return 0
    fi
    if ! venv_works; then
        local py
        py=$(command -v python3 || true)
        [[ -n $py ]] || die "no python3 on PATH: install Python >= ${MIN_PY[0]}.${MIN_PY[1]}"
        python_is_recent "$py" \
            || die "python3 on PATH ($py, $("$py" --version 2>&1)) is too old: tgw needs Python >= ${MIN_PY[0]}.${MIN_PY[1]}; put a newer python3 first on PATH"
        "$py" -c 'import ensurepip, venv' 2>/dev/null \
            || die "$py has no venv/ensurepip module: install python3-venv (or python3.X-venv for your version)"
        if [[ -e $VENV ]]; then
            say "recreating .venv (it does not work or its Python is older than ${MIN_PY[0]}.${MIN_PY[1]})"
            rm -rf "$VENV"
        fi
        say "creating virtual environment .venv with $py ($("$py" --version 2>&1))"
        "$py" -m venv "$VENV"
    fi
    say "installing the project into .venv (pip install -e '.[dev]'; pyproject.toml changed or first run; output in ${TMPDIR:-/tmp}/tgw-setup-pip.log)"
    rm -f "$STAMP"
    local t=$SECONDS
    local log="${TMPDIR:-/tmp}/tgw-setup-pip.log"
    "$VENV/bin/python" -m pip install -e '.[dev]' >"$log" 2>&1 \
        || { tail -n 30 "$log" >&2; die "pip install -e '.[dev]' failed; last lines above, all in $log"; }
    printf '%s\n' "$want" >"$STAMP"
    say "project installed into .venv in $((SECONDS - t)) s"
}

# --- TimescaleDB ------------------------------------------------------------------------------------------

ensure_timescaledb() {
    if [[ ${TGW_SKIP_TIMESCALEDB:-0} == 1 ]]; then
        say "TGW_SKIP_TIMESCALEDB=1: not building TimescaleDB; tests will use plain PostgreSQL"
        return 0
    fi
    if ! bash "$ROOT/scripts/build_timescaledb.sh"; then
        if [[ ${TGW_ALLOW_NO_TIMESCALEDB:-0} == 1 ]]; then
            warn "TimescaleDB could not be built; continuing with plain PostgreSQL (TGW_ALLOW_NO_TIMESCALEDB=1)"
            return 0
        fi
        die "TimescaleDB could not be built (see above). To run on plain PostgreSQL only, set TGW_ALLOW_NO_TIMESCALEDB=1"
    fi
}

# --- main -------------------------------------------------------------------------------------------------

mapfile -t wanted < <(printf '%s\n' "${BASE_PACKAGES[@]}"; python_packages; browser_packages)
# Ubuntu lacks Debian's archive key, which verifies the trixie source index.
if [[ ! -f /usr/share/keyrings/debian-archive-keyring.gpg && ${TGW_SKIP_TIMESCALEDB:-0} != 1 ]]; then
    wanted+=(debian-archive-keyring)
fi
ensure_packages "${wanted[@]}"
say "Debian packages: all ${#wanted[@]} present"
ensure_timescaledb
ensure_venv
say "done in $((SECONDS - STARTED)) s"
