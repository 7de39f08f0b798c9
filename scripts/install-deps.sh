#!/usr/bin/env bash
# Install the host dependencies of Nestbox (idempotent, cached).
#
#   scripts/install-deps.sh
#
# * apt packages (installed only when missing): runc iptables iproute2 e2fsprogs mount
#   debootstrap ca-certificates xz-utils debian-archive-keyring python3,
#   plus rustc+cargo when no cargo is found.
# * CRIU >= 4.2 from Debian forky (testing), unpacked into a private prefix
#   $NESTBOX_HOME/deps/criu (NESTBOX_HOME defaults to /var/lib/nestbox) and
#   started through the wrapper $NESTBOX_HOME/deps/bin/criu, which runs it with
#   the prefix's own dynamic loader and libraries. The suite is NOT added to the
#   system's apt sources: a private apt configuration under
#   $NESTBOX_HOME/deps/criu-work is used. Bookworm's CRIU 3.17 fails on recent
#   kernels (vDSO check); trixie's CRIU 4.1.1 passes `criu check` but cannot dump
#   any TCP/UDP socket on kernels >= 6.16 (getsockopt SO_PASSCRED now returns
#   EOPNOTSUPP for AF_INET; criu issue #2718, fixed in 4.2). Override with
#   NESTBOX_CRIU_SUITE=trixie NESTBOX_CRIU_MIN=4.1 on older kernels.
#   Use it with `runc --criu $NESTBOX_HOME/deps/bin/criu ...` or put
#   $NESTBOX_HOME/deps/bin first on PATH.
# Set NESTBOX_FORCE_CRIU=1 to reinstall CRIU.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$SCRIPT_DIR/lib.sh"

require_root_linux_cgroups "$@"

export DEBIAN_FRONTEND=noninteractive
CRIU_SUITE="${NESTBOX_CRIU_SUITE:-forky}"
CRIU_MIN="${NESTBOX_CRIU_MIN:-4.2}"
CRIU_WORK="$NESTBOX_DEPS_DIR/criu-work"
CRIU_WRAPPER="$NESTBOX_BIN_DIR/criu"
T_START=$(date +%s.%N)

# --- 1. apt packages ----------------------------------------------------------
pkg_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

step_begin "apt packages"
WANT=(runc iptables iproute2 e2fsprogs mount debootstrap ca-certificates xz-utils debian-archive-keyring python3)
if [ -x "${HOME:-/root}/.cargo/bin/cargo" ] && ! command -v cargo >/dev/null; then
  export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null; then
  WANT+=(rustc cargo)
fi
MISSING=()
for p in "${WANT[@]}"; do
  pkg_installed "$p" || MISSING+=("$p")
done
if [ ${#MISSING[@]} -eq 0 ]; then
  step_cached "apt packages" "${WANT[*]}"
else
  log "  installing: ${MISSING[*]}"
  apt-get update -q 2>&1 | sed 's/^/[nestbox]   apt: /' >&2
  apt-get install -y -q --no-install-recommends "${MISSING[@]}" 2>&1 \
    | grep -E '^(Setting up|Unpacking|E:|W:)' | sed 's/^/[nestbox]   apt: /' >&2 || true
  for p in "${MISSING[@]}"; do
    pkg_installed "$p" || die "apt-get failed to install $p"
  done
  step_done "apt packages" "installed ${MISSING[*]}"
fi

# --- 2. CRIU 4.x in a private prefix -------------------------------------------
# version_ge A B: dotted version A >= B
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }
criu_version() { "$CRIU_WRAPPER" --version 2>/dev/null | awk '/^Version:/{print $2; exit}'; }
criu_is_4x() {
  [ -x "$CRIU_WRAPPER" ] || return 1
  local v; v="$(criu_version)"
  case "$v" in 4.*) version_ge "$v" "$CRIU_MIN" ;; *) return 1 ;; esac
}

# criu_socket_selftest: dump (leave running) a host process holding a listening TCP
# socket. Catches CRIU/kernel socket incompatibilities that `criu check` misses.
criu_socket_selftest() {
  local d pid rc=0
  d="$(mktemp -d /tmp/nestbox-criu-selftest.XXXXXX)"
  setsid python3 -c 'import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
time.sleep(60)' </dev/null >/dev/null 2>&1 &
  pid=$!
  sleep 0.3
  if ! "$CRIU_WRAPPER" dump -t "$pid" -D "$d" -o dump.log --shell-job --leave-running --tcp-established >/dev/null 2>&1; then
    rc=1
    grep -E 'Error' "$d/dump.log" | head -5 | sed 's/^/[nestbox]   /' >&2 || true
  fi
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$d"
  return $rc
}

if [ "${NESTBOX_FORCE_CRIU:-0}" != "1" ] && criu_is_4x; then
  step_cached "criu" "$("$CRIU_WRAPPER" --version | head -1) at $CRIU_WRAPPER"
else
  step_begin "criu from $CRIU_SUITE (private apt config)"
  KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -f "$KEYRING" ] || die "$KEYRING is missing (package debian-archive-keyring)"
  mkdir -p "$CRIU_WORK"/{etc/sources.list.d,etc/preferences.d,state/lists/partial,cache/archives/partial}
  : >"$CRIU_WORK/state/status"      # empty dpkg status: resolve the full closure
  echo "deb [signed-by=$KEYRING] $NESTBOX_DEBIAN_MIRROR $CRIU_SUITE main" >"$CRIU_WORK/etc/sources.list"
  cat >"$CRIU_WORK/apt.conf" <<EOF
Dir::Etc::SourceList "$CRIU_WORK/etc/sources.list";
Dir::Etc::SourceParts "$CRIU_WORK/etc/sources.list.d";
Dir::Etc::Preferences "$CRIU_WORK/etc/preferences";
Dir::Etc::PreferencesParts "$CRIU_WORK/etc/preferences.d";
Dir::State "$CRIU_WORK/state";
Dir::State::status "$CRIU_WORK/state/status";
Dir::Cache "$CRIU_WORK/cache";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
APT::Sandbox::User "root";
Debug::NoLocking "true";
Acquire::Languages "none";
EOF
  papt() { APT_CONFIG="$CRIU_WORK/apt.conf" "$@"; }

  log "  apt-get update ($CRIU_SUITE main, private state in $CRIU_WORK)"
  papt apt-get update -q 2>&1 | sed 's/^/[nestbox]   apt: /' >&2
  CAND="$(papt apt-cache policy criu | awk '/Candidate:/{print $2}')"
  case "$CAND" in
    4.*) version_ge "${CAND%%-*}" "$CRIU_MIN" || die "CRIU in $CRIU_SUITE is $CAND, need >= $CRIU_MIN"
         log "  criu candidate: $CAND" ;;
    *) die "no CRIU 4.x in $CRIU_SUITE (candidate: '${CAND:-none}')" ;;
  esac
  # criu plus its recursive Depends/Pre-Depends closure (all libraries, incl.
  # libc6 so that the private ld-linux matches the private libc).
  mapfile -t PKGS < <(papt apt-cache depends --recurse --no-recommends --no-suggests \
      --no-conflicts --no-breaks --no-replaces --no-enhances criu \
    | grep -v '^[ <]' | sort -u)
  log "  packages (${#PKGS[@]}): ${PKGS[*]}"
  rm -rf "$CRIU_WORK/debs"; mkdir -p "$CRIU_WORK/debs"
  (cd "$CRIU_WORK/debs" && papt apt-get download -q "${PKGS[@]}" 2>&1 | grep -E '^(E:|W:)' | sed 's/^/[nestbox]   apt: /' >&2 || true)
  NDEBS=$(find "$CRIU_WORK/debs" -name '*.deb' | wc -l)
  [ "$NDEBS" -eq "${#PKGS[@]}" ] || die "downloaded $NDEBS of ${#PKGS[@]} packages into $CRIU_WORK/debs"

  STAGE="$NESTBOX_DEPS_DIR/.criu-stage.$$"
  rm -rf "$STAGE"; mkdir -p "$STAGE"
  for deb in "$CRIU_WORK"/debs/*.deb; do
    dpkg -x "$deb" "$STAGE"
  done
  [ -x "$STAGE/usr/sbin/criu" ] || die "criu binary missing after unpacking"
  [ -e "$STAGE/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" ] || die "private ld-linux-x86-64.so.2 missing after unpacking"
  # Record what is inside.
  for deb in "$CRIU_WORK"/debs/*.deb; do
    dpkg-deb -f "$deb" Package Version | paste -sd' '
  done >"$STAGE/PACKAGES"
  rm -rf "$NESTBOX_CRIU_PREFIX.old"
  [ -e "$NESTBOX_CRIU_PREFIX" ] && mv "$NESTBOX_CRIU_PREFIX" "$NESTBOX_CRIU_PREFIX.old"
  mv "$STAGE" "$NESTBOX_CRIU_PREFIX"
  rm -rf "$NESTBOX_CRIU_PREFIX.old"

  # Library search path: every directory of the prefix holding shared objects.
  LIBPATH="$(cd "$NESTBOX_CRIU_PREFIX" && find . -name '*.so*' \( -type f -o -type l \) -printf '%h\n' \
    | sort -u | grep -v '/gconv$' | sed "s|^\.|$NESTBOX_CRIU_PREFIX|" | paste -sd:)"
  mkdir -p "$NESTBOX_BIN_DIR"
  cat >"$CRIU_WRAPPER.tmp" <<EOF
#!/bin/sh
# Generated by nestbox scripts/install-deps.sh: CRIU $CAND from Debian $CRIU_SUITE,
# run with its own dynamic loader and libraries from $NESTBOX_CRIU_PREFIX.
# --library-path (not LD_LIBRARY_PATH) keeps the environment of the helper
# programs CRIU executes (iptables, ip, ...) clean: they use the host's libraries.
exec "$NESTBOX_CRIU_PREFIX/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \\
  --library-path "$LIBPATH" \\
  --argv0 criu \\
  "$NESTBOX_CRIU_PREFIX/usr/sbin/criu" "\$@"
EOF
  chmod 0755 "$CRIU_WRAPPER.tmp"
  mv "$CRIU_WRAPPER.tmp" "$CRIU_WRAPPER"
  criu_is_4x || die "$CRIU_WRAPPER --version does not report >= $CRIU_MIN: $("$CRIU_WRAPPER" --version 2>&1 | head -3)"
  log "  socket self-test (criu dump of a process with TCP+UDP sockets)"
  criu_socket_selftest || { rm -f "$CRIU_WRAPPER"; die "CRIU $CAND cannot checkpoint a process with TCP/UDP sockets on kernel $(uname -r); see scripts/NOTES.md"; }
  step_done "criu from $CRIU_SUITE" "$("$CRIU_WRAPPER" --version | head -1)"
fi

# --- 3. verify ---------------------------------------------------------------
# `criu check` is quick (~0.1 s) and catches kernel/host regressions, so it runs
# every time. It needs iptables for the network-lock check.
step_begin "criu check"
if ! OUT="$(PATH="$NESTBOX_BIN_DIR:$PATH" criu check 2>&1)"; then
  printf '%s\n' "$OUT" | sed 's/^/[nestbox]   /' >&2
  die "criu check failed"
fi
printf '%s\n' "$OUT" | grep -q 'Looks good' || { printf '%s\n' "$OUT" >&2; die "criu check did not print 'Looks good'"; }
step_done "criu check" "Looks good"

for tool in runc iptables ip debootstrap python3; do
  command -v "$tool" >/dev/null || die "$tool not found on PATH after installation"
done

log "dependencies ready in $(awk -v a="$T_START" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1fs", b-a}'):"
log "  criu wrapper : $CRIU_WRAPPER ($("$CRIU_WRAPPER" --version | head -1))"
log "  criu prefix  : $NESTBOX_CRIU_PREFIX"
log "  runc         : $(command -v runc) ($(runc --version | head -1))"
log "  iptables     : $(command -v iptables)"
log "  debootstrap  : $(command -v debootstrap)"
log "  cargo        : $(command -v cargo || echo 'not found')"
log "  use: runc --criu $CRIU_WRAPPER ...   or   PATH=$NESTBOX_BIN_DIR:\$PATH"
