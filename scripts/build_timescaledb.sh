#!/usr/bin/env bash
# Build and install TimescaleDB (Apache-2 edition) for PostgreSQL 15 from Debian's trixie SOURCE package.
#
# The system's apt sources are never touched: a private apt configuration (its own sources.list with one
# deb-src line, its own lists and cache directories) fetches the source package only. No binary package
# from trixie is ever installed. Skips everything when the extension is already installed.
#
# Needs: postgresql-server-dev-15, build-essential, cmake, libssl-dev, libkrb5-dev, dpkg-dev
# (scripts/setup.sh installs them).
#
# Environment:
#   TGW_PG_CONFIG      pg_config to build against (default /usr/lib/postgresql/15/bin/pg_config)
#   TGW_APT_CACHE_DIR  private apt state (default /var/cache/tgw-apt as root, else $XDG_CACHE_HOME/tgw-apt)
#   TGW_BUILD_JOBS     parallel make jobs (default 2)
set -euo pipefail

say() { printf 'timescaledb: %s\n' "$*"; }
die() { printf 'timescaledb: ERROR: %s\n' "$*" >&2; exit 1; }

PG_CONFIG="${TGW_PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
JOBS="${TGW_BUILD_JOBS:-2}"
SUITE_LINE="deb-src http://deb.debian.org/debian trixie main"
# Pin the index's signature to Debian's archive keyring when present (on Ubuntu: package debian-archive-keyring).
DEBIAN_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
if [[ -f $DEBIAN_KEYRING ]]; then
    SUITE_LINE="deb-src [signed-by=$DEBIAN_KEYRING] http://deb.debian.org/debian trixie main"
fi

if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
    APT_DIR="${TGW_APT_CACHE_DIR:-/var/cache/tgw-apt}"
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
    APT_DIR="${TGW_APT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tgw-apt}"
else
    die "not root and no sudo: 'make install' into PostgreSQL's directories needs root; run as root"
fi

[[ -x $PG_CONFIG ]] || die "$PG_CONFIG not found: install postgresql-server-dev-15 (scripts/setup.sh does)"
SHAREDIR=$("$PG_CONFIG" --sharedir)
PKGLIBDIR=$("$PG_CONFIG" --pkglibdir)
CONTROL="$SHAREDIR/extension/timescaledb.control"

installed_version() {
    # default_version from the control file, when both it and the loader library are present.
    [[ -f $CONTROL && -f $PKGLIBDIR/timescaledb.so ]] || return 1
    sed -n "s/^default_version *= *'\(.*\)'/\1/p" "$CONTROL"
}

if version=$(installed_version); then
    say "already installed (version $version: $CONTROL), nothing to do"
    exit 0
fi

for tool in apt-get dpkg-source cmake make cc; do
    command -v "$tool" >/dev/null 2>&1 \
        || die "'$tool' is missing: run scripts/setup.sh (it installs dpkg-dev, cmake, build-essential)"
done
[[ -f $("$PG_CONFIG" --includedir-server)/postgres.h ]] \
    || die "PostgreSQL server headers missing: install postgresql-server-dev-15"

started=$SECONDS
say "building for $("$PG_CONFIG" --version) ($PG_CONFIG)"

# --- private apt configuration: only trixie's deb-src, own lists and caches ---------------------------
mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$APT_DIR/sources.list.d"
printf '%s\n' "$SUITE_LINE" >"$APT_DIR/sources.list"
APT=(apt-get -q
     -o "Dir::Etc::SourceList=$APT_DIR/sources.list"
     -o "Dir::Etc::SourceParts=$APT_DIR/sources.list.d"
     -o "Dir::State::Lists=$APT_DIR/lists"
     -o "Dir::Cache=$APT_DIR/cache"
     -o "Dir::Cache::pkgcache="
     -o "Dir::Cache::srcpkgcache="
     -o "APT::Sandbox::User=root")

say "fetching the trixie source index into $APT_DIR (private apt config; system sources untouched)"
if ! "${APT[@]}" update >"$APT_DIR/update.log" 2>&1; then
    cat "$APT_DIR/update.log" >&2
    die "could not fetch the trixie source index from deb.debian.org (network? proxy?); see above"
fi
# apt-get update exits 0 on some fetch errors; make sure the Sources index really arrived.
if ! compgen -G "$APT_DIR/lists/*trixie*Sources*" >/dev/null; then
    cat "$APT_DIR/update.log" >&2
    die "the trixie Sources index is missing after 'apt-get update'; see above"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tgw-timescaledb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
say "downloading source package timescaledb (trixie) into $WORK"
if ! "${APT[@]}" --download-only source timescaledb >download.log 2>&1; then
    cat download.log >&2
    die "'apt-get source timescaledb' failed; see above"
fi
dsc=$(compgen -G 'timescaledb_*.dsc' | head -n1) || true
[[ -n $dsc ]] || die "no timescaledb .dsc downloaded (see $WORK/download.log)"
say "unpacking $dsc"
# apt checked the files against trixie's signed Release/Sources; dpkg-source re-checks the tarball
# hashes (the uploader's OpenPGP key is not on this machine, so it only warns about the signature).
dpkg-source -x "$dsc" src >unpack.log 2>&1 || { cat unpack.log >&2; die "dpkg-source -x $dsc failed"; }

cd src
say "configuring (bootstrap, Apache-only edition)"
./bootstrap -DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
    -DPG_CONFIG="$PG_CONFIG" >"$WORK/bootstrap.log" 2>&1 \
    || { tail -n 40 "$WORK/bootstrap.log" >&2; die "bootstrap (cmake) failed; last lines above"; }
say "compiling and installing (make -j$JOBS install)"
cd build
make -j"$JOBS" >"$WORK/make.log" 2>&1 || { tail -n 40 "$WORK/make.log" >&2; die "make failed; last lines above"; }
"${SUDO[@]}" make install >"$WORK/install.log" 2>&1 \
    || { tail -n 40 "$WORK/install.log" >&2; die "make install failed; last lines above"; }

version=$(installed_version) || die "installed, but $CONTROL or $PKGLIBDIR/timescaledb.so is missing afterwards"
say "installed version $version ($CONTROL, $PKGLIBDIR/timescaledb*.so) in $((SECONDS - started)) s"
