# shellcheck shell=bash
# Shared helpers for the Nestbox host scripts. Sourced, not executed.

NESTBOX_HOME="${NESTBOX_HOME:-/var/lib/nestbox}"
NESTBOX_TEMPLATES_DIR="${NESTBOX_TEMPLATES_DIR:-$NESTBOX_HOME/templates}"
NESTBOX_DEPS_DIR="$NESTBOX_HOME/deps"
NESTBOX_CRIU_PREFIX="$NESTBOX_DEPS_DIR/criu"
NESTBOX_BIN_DIR="$NESTBOX_DEPS_DIR/bin"

# Container root maps to this host uid/gid; the range is NESTBOX_UID_RANGE long.
NESTBOX_UID_SHIFT="${NESTBOX_UID_SHIFT:-100000}"
NESTBOX_UID_RANGE="${NESTBOX_UID_RANGE:-65536}"

NESTBOX_DEBIAN_MIRROR="${NESTBOX_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

log() { printf '[nestbox] %s\n' "$*" >&2; }
die() { printf '[nestbox] error: %s\n' "$*" >&2; exit 1; }

# step_begin NAME / step_done NAME [note]: one line per step, with timing.
_step_t0=0
step_begin() { _step_t0=$(date +%s.%N); log "step $1 ..."; }
step_done() {
  local t1; t1=$(date +%s.%N)
  local note="${2:-}"
  log "step $1 done${note:+ ($note)} [$(awk -v a="$_step_t0" -v b="$t1" 'BEGIN{printf "%.1fs", b-a}')]"
}
step_cached() { log "step $1 done (cached)${2:+ - $2}"; }

# Fail with a helpful paragraph unless we are root on Linux with cgroups mounted.
require_root_linux_cgroups() {
  local why=""
  if [ "$(uname -s)" != "Linux" ]; then
    why="this is $(uname -s), not Linux"
  elif [ "$(id -u)" != "0" ]; then
    why="it is running as uid $(id -u), not root"
  elif ! grep -qE '^[^ ]+ /sys/fs/cgroup[/ ]' /proc/self/mounts 2>/dev/null; then
    why="no cgroup filesystem is mounted at /sys/fs/cgroup"
  fi
  if [ -n "$why" ]; then
    cat >&2 <<EOF
[nestbox] error: $(basename "$0") cannot run because $why. Nestbox runs sandboxes
as runc containers with user namespaces and checkpoints them with CRIU, which
needs a Linux host (Debian 12 or newer is what these scripts are written for),
root privileges and a mounted cgroup hierarchy (v1 hybrid or v2 at
/sys/fs/cgroup). Run it again as root on such a host, e.g.
"sudo $0 $*"; inside a container, start it privileged with the host's
/sys/fs/cgroup available.
EOF
    exit 1
  fi
}
