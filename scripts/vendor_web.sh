#!/usr/bin/env bash
# Re-fetch the web console's third-party files from the npm registry into the package, so that
# the console never loads anything from a CDN at run time (the machine may be offline).
#
#   bash scripts/vendor_web.sh            # the pinned versions below
#   LEAFLET_VERSION=1.9.4 bash scripts/vendor_web.sh
#
# Writes gateway/web/static/vendor/leaflet/ (leaflet.js, leaflet.css, images/, LICENSE) and
# gateway/web/static/vendor/VENDORED.txt (package, version, npm integrity). Needs `npm`.
set -euo pipefail

LEAFLET_VERSION="${LEAFLET_VERSION:-1.9.4}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
vendor="$repo/gateway/web/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

command -v npm >/dev/null || { echo "vendor_web: npm is missing (apt-get install npm)" >&2; exit 1; }

echo "vendor_web: fetching leaflet@$LEAFLET_VERSION from the npm registry"
(cd "$work" && npm pack --silent "leaflet@$LEAFLET_VERSION" >/dev/null)
tarball="$(ls "$work"/leaflet-*.tgz)"
integrity="$(npm view "leaflet@$LEAFLET_VERSION" dist.integrity)"
expected="${integrity#sha512-}"
actual="$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [ "$expected" != "$actual" ]; then
  echo "vendor_web: leaflet tarball does not match the registry's integrity $integrity" >&2
  exit 1
fi
tar -xzf "$tarball" -C "$work"

rm -rf "$vendor/leaflet"
mkdir -p "$vendor/leaflet/images"
cp "$work/package/dist/leaflet.js" "$work/package/dist/leaflet.css" "$vendor/leaflet/"
cp "$work/package/dist/images/"*.png "$vendor/leaflet/images/"
cp "$work/package/LICENSE" "$vendor/leaflet/LICENSE"

cat > "$vendor/VENDORED.txt" <<TXT
# Third-party files of the web console, fetched from the npm registry by scripts/vendor_web.sh.
# Do not edit by hand: change the version there and run it again.
leaflet $LEAFLET_VERSION $integrity  (dist/leaflet.js, dist/leaflet.css, dist/images, LICENSE; BSD-2-Clause)
TXT
echo "vendor_web: wrote $vendor/leaflet ($(du -sh "$vendor/leaflet" | cut -f1))"
