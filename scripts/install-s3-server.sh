#!/usr/bin/env bash
# Install a local S3-compatible server for tests and single-host use (idempotent, cached):
# OpenStack Swift with its s3api middleware (Debian's python3-swift), run by
# scripts/s3-server.py (proxy, account, container and object servers in one directory, on
# loopback; see that file to run one by hand).
#
#   scripts/install-s3-server.sh
#
# * python3-swift and the whole closure of its Depends (a Python 3.11, its modules and
#   libraries, libc6 included) from Debian bookworm are unpacked into the private prefix
#   $NESTBOX_HOME/deps/swift and started through the wrapper
#   $NESTBOX_HOME/deps/bin/nestbox-s3-python, which runs that Python with the prefix's own
#   dynamic loader, libraries and modules (as CRIU is run, see install-deps.sh): the host's
#   Python and apt state are not touched. A private apt configuration under
#   $NESTBOX_HOME/deps/swift-work is used; the .debs are removed once unpacked.
# * Why Swift: `rclone serve s3` needs rclone >= 1.65, but bookworm and trixie ship 1.60,
#   forky has none and sid's 1.75 is built without `serve s3`; MinIO, Garage, SeaweedFS and
#   versitygw are not in Debian. Ceph's radosgw (trixie, forky) runs standalone on its dbstore
#   backend, but there a multipart upload stores the last part in place of every part, and
#   its POSIX driver lists deleted and duplicate keys (seen with radosgw 18.2 and 20.2).
# Set NESTBOX_FORCE_S3_SERVER=1 to reinstall; NESTBOX_S3_SERVER_SUITE (default bookworm).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$SCRIPT_DIR/lib.sh"

export DEBIAN_FRONTEND=noninteractive
SUITE="${NESTBOX_S3_SERVER_SUITE:-bookworm}"
PREFIX="$NESTBOX_DEPS_DIR/swift"
WORK="$NESTBOX_DEPS_DIR/swift-work"
WRAPPER="$NESTBOX_BIN_DIR/nestbox-s3-python"
[ -n "$NESTBOX_DEPS_DIR" ] && [ -n "$NESTBOX_BIN_DIR" ] || die "NESTBOX_DEPS_DIR/NESTBOX_BIN_DIR unset"

s3_ok() {
  [ -x "$WRAPPER" ] && "$WRAPPER" -c 'import swift.common.middleware.s3api, swift.proxy.server, swift.obj.server, pkg_resources' >/dev/null 2>&1
}
swift_version() { awk '$2 == "python3-swift" {print $4}' "$PREFIX/PACKAGES" 2>/dev/null; }
s3_cached() { [ -x "$WRAPPER" ] && [ -f "$PREFIX/PACKAGES" ] && "$WRAPPER" -c 'import swift' >/dev/null 2>&1; }

if [ "${NESTBOX_FORCE_S3_SERVER:-0}" != "1" ] && s3_cached; then
  step_cached "s3 server" "swift $(swift_version) with s3api, $WRAPPER"
  exit 0
fi

step_begin "s3 server: swift from $SUITE (private apt config)"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$KEYRING" ] || die "$KEYRING is missing (package debian-archive-keyring)"
mkdir -p "$WORK"/{etc/sources.list.d,etc/preferences.d,state/lists/partial,cache/archives/partial}
: >"$WORK/state/status" # empty dpkg status: resolve the full closure
echo "deb [signed-by=$KEYRING] $NESTBOX_DEBIAN_MIRROR $SUITE main" >"$WORK/etc/sources.list"
cat >"$WORK/apt.conf" <<APTCONF
Dir::Etc::SourceList "$WORK/etc/sources.list";
Dir::Etc::SourceParts "$WORK/etc/sources.list.d";
Dir::Etc::Preferences "$WORK/etc/preferences";
Dir::Etc::PreferencesParts "$WORK/etc/preferences.d";
Dir::State "$WORK/state";
Dir::State::status "$WORK/state/status";
Dir::Cache "$WORK/cache";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
APT::Sandbox::User "root";
Debug::NoLocking "true";
Acquire::Languages "none";
APTCONF
papt() { APT_CONFIG="$WORK/apt.conf" "$@"; }

log "  apt-get update ($SUITE main, private state in $WORK)"
papt apt-get update -q 2>&1 | sed 's/^/[nestbox]   apt: /' >&2
CAND="$(papt apt-cache policy python3-swift | awk '/Candidate:/{print $2}')"
case "$CAND" in
  ''|'(none)') die "no python3-swift in Debian $SUITE" ;;
esac
log "  python3-swift candidate: $CAND"
mapfile -t PKGS < <(papt apt-cache depends --recurse --no-recommends --no-suggests \
    --no-conflicts --no-breaks --no-replaces --no-enhances python3-swift \
  | grep -v '^[ <]' | sort -u)
log "  packages: ${#PKGS[@]}"
rm -rf "$WORK/debs"; mkdir -p "$WORK/debs"
(cd "$WORK/debs" && papt apt-get download -q "${PKGS[@]}" 2>&1 | grep -E '^(E:|W:)' | sed 's/^/[nestbox]   apt: /' >&2 || true)
NDEBS=$(find "$WORK/debs" -name '*.deb' | wc -l)
[ "$NDEBS" -eq "${#PKGS[@]}" ] || die "downloaded $NDEBS of ${#PKGS[@]} packages into $WORK/debs"

STAGE="$NESTBOX_DEPS_DIR/.swift-stage.$$"
rm -rf "$STAGE"; mkdir -p "$STAGE"
for deb in "$WORK"/debs/*.deb; do
  dpkg -x "$deb" "$STAGE"
done
PYBIN="$(cd "$STAGE/usr/bin" && ls | grep -E '^python3\.[0-9]+$' | sort -V | tail -1)"
[ -n "$PYBIN" ] || die "no python3.x binary after unpacking"
for deb in "$WORK"/debs/*.deb; do
  dpkg-deb -f "$deb" Package Version | paste -sd' '
done >"$STAGE/PACKAGES"
rm -rf "$WORK/debs"
rm -rf "$PREFIX.old"
[ -e "$PREFIX" ] && mv "$PREFIX" "$PREFIX.old"
mv "$STAGE" "$PREFIX"
rm -rf "$PREFIX.old"

LOADER="$PREFIX/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
[ -e "$LOADER" ] || LOADER="$PREFIX/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
[ -e "$LOADER" ] || die "private ld-linux-x86-64.so.2 missing after unpacking"
# Library search path: the prefix's shared-library directories (Python's own modules excluded).
LIBPATH="$(cd "$PREFIX" && find . -name '*.so*' \( -type f -o -type l \) -printf '%h\n' \
  | grep -v -e '/gconv$' -e 'python3' | sort -u | sed "s|^\.|$PREFIX|" | paste -sd:)"
mkdir -p "$NESTBOX_BIN_DIR"
cat >"$WRAPPER.tmp" <<WRAP
#!/bin/sh
# Generated by nestbox scripts/install-s3-server.sh: $PYBIN with python3-swift $CAND from
# Debian $SUITE, run with its own dynamic loader, libraries and modules from $PREFIX.
export PYTHONHOME="$PREFIX/usr"
export PYTHONPATH="$PREFIX/usr/lib/python3/dist-packages"
export PYTHONNOUSERSITE=1
export NESTBOX_S3_PYTHON="$WRAPPER"
exec "$LOADER" --library-path "$LIBPATH" --argv0 "$PREFIX/usr/bin/$PYBIN" "$PREFIX/usr/bin/$PYBIN" "\$@"
WRAP
chmod 0755 "$WRAPPER.tmp"
mv "$WRAPPER.tmp" "$WRAPPER"
s3_ok || die "$WRAPPER cannot import swift's s3api: $("$WRAPPER" -c 'import swift.common.middleware.s3api' 2>&1 | tail -3)"
step_done "s3 server: swift from $SUITE" "swift $(swift_version), $(du -sh "$PREFIX" | cut -f1)"
