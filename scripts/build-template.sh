#!/usr/bin/env bash
# Build a sandbox template root filesystem.
#
#   scripts/build-template.sh [NAME]        (NAME defaults to "base")
#
# A template with a recipe, templates/NAME/recipe.sh in the repository (e.g. code-interpreter-v1),
# is base plus the recipe's Debian packages, files and template.json fields; see that file.
#
# Result: $NESTBOX_TEMPLATES_DIR/NAME/{rootfs/,template.json,.complete}
#   NESTBOX_TEMPLATES_DIR defaults to /var/lib/nestbox/templates.
# The rootfs is a Debian bookworm minbase with bash, coreutils, python3, git,
# curl, ca-certificates, procps, iproute2 and sudo, a user "user" (1000:1000)
# with password-less sudo (as in E2B's base template), an empty /run/nestbox
# mount point, and every file owned by uid/gid +100000 (container root = host
# uid 100000, range 65536).
# Cached: does nothing when NAME/.complete holds this build's key (the recipe
# version, suite and packages); a template built by an older recipe is rebuilt.
# Extra packages: NESTBOX_TEMPLATE_EXTRA_PACKAGES="pkg1,pkg2".
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$SCRIPT_DIR/lib.sh"

NAME="${1:-base}"
case "$NAME" in
  ''|*/*|.*) die "invalid template name '$NAME'" ;;
esac
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
RECIPE_DIR="$REPO_DIR/templates/$NAME"
# What a recipe may set: RECIPE_PACKAGES (comma-separated), RECIPE_META (a JSON object merged
# into template.json) and a function recipe_install ROOTFS (run before ownership is shifted).
RECIPE_PACKAGES=""
RECIPE_META="{}"
recipe_install() { :; }
if [ -f "$RECIPE_DIR/recipe.sh" ]; then
  # shellcheck source=/dev/null
  . "$RECIPE_DIR/recipe.sh"
fi

require_root_linux_cgroups "$@"

SUITE="${NESTBOX_TEMPLATE_SUITE:-bookworm}"
PACKAGES="bash,coreutils,python3,git,curl,ca-certificates,procps,iproute2,sudo"
if [ -n "${NESTBOX_TEMPLATE_EXTRA_PACKAGES:-}" ]; then
  PACKAGES="$PACKAGES,$NESTBOX_TEMPLATE_EXTRA_PACKAGES"
fi
# Bump RECIPE when this script changes what a template holds: machines rebuild on their next setup.
RECIPE=2
BUILD_KEY="recipe=$RECIPE suite=$SUITE packages=$PACKAGES"
if [ -f "$RECIPE_DIR/recipe.sh" ]; then
  BUILD_KEY="$BUILD_KEY apt=$RECIPE_PACKAGES"
  # Any change to the recipe's files (the recipe, a server's source) rebuilds the template.
  SOURCE_SUM="$(cd "$RECIPE_DIR" && find . -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
  BUILD_KEY="$BUILD_KEY source=$SOURCE_SUM"
fi
SHIFT="$NESTBOX_UID_SHIFT"
DEST="$NESTBOX_TEMPLATES_DIR/$NAME"
DEB_CACHE="$NESTBOX_HOME/cache/debootstrap-$SUITE"
APT_CACHE="$NESTBOX_HOME/cache/apt-$SUITE"

if [ -f "$DEST/.complete" ] && [ "$(cat "$DEST/.complete")" = "$BUILD_KEY" ]; then
  step_cached "template $NAME" "$DEST"
  exit 0
fi
if [ -f "$DEST/.complete" ]; then
  log "template $NAME was built by an older recipe ($(cat "$DEST/.complete" | head -c 200)); rebuilding"
fi

command -v debootstrap >/dev/null || die "debootstrap is not installed; run scripts/install-deps.sh first"
command -v python3 >/dev/null || die "python3 is required on the host"

mkdir -p "$NESTBOX_TEMPLATES_DIR" "$DEB_CACHE"
# Remove leftovers of interrupted builds of this template.
for stale in "$NESTBOX_TEMPLATES_DIR"/.build-"$NAME".* "$NESTBOX_TEMPLATES_DIR"/.old-"$NAME".*; do
  [ -e "$stale" ] || continue
  log "removing stale build directory $stale"
  rm -rf --one-file-system "$stale"
done

T_START=$(date +%s)
BUILD="$(mktemp -d "$NESTBOX_TEMPLATES_DIR/.build-$NAME.XXXXXX")"
chmod 0755 "$BUILD"
ROOTFS="$BUILD/rootfs"
APT_CACHE_MOUNT=""
trap 'rc=$?; if [ -n "$APT_CACHE_MOUNT" ]; then umount "$APT_CACHE_MOUNT" || true; fi; if [ $rc -ne 0 ]; then log "template build failed (rc=$rc); full debootstrap log: $BUILD.debootstrap.log"; rm -rf --one-file-system "$BUILD"; fi' EXIT
# Interrupted: the EXIT trap still unmounts the apt cache and removes the partial build.
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. debootstrap -----------------------------------------------------------
step_begin "debootstrap $SUITE minbase (+$PACKAGES)"
LOGFILE="$BUILD.debootstrap.log"
# Condense debootstrap's output: print phase changes plus a count per phase.
set +e
debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$DEB_CACHE" \
  "$SUITE" "$ROOTFS" "$NESTBOX_DEBIAN_MIRROR" 2>&1 | tee "$LOGFILE" | awk '
  function flush() { if (phase != "" && n > 1) printf "[nestbox]   ... %s %d packages\n", phase, n; fflush() }
  /^I: Validating / { next }
  /^I: (Retrieving|Extracting|Unpacking|Configuring) / {
    p = $2; if (p == phase) { n++; next }
    flush(); phase = p; n = 1; print "[nestbox]   debootstrap: " $0; fflush(); next
  }
  { flush(); phase = ""; n = 0; print "[nestbox]   debootstrap: " $0; fflush() }
  END { flush() }' >&2
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
  tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" 2>/dev/null >&2 || true
  die "debootstrap failed (rc=$rc); see $LOGFILE"
fi
rm -f "$LOGFILE"
step_done "debootstrap"

# --- 2. user, mount points, hostname -----------------------------------------
step_begin "configure rootfs (user 'user' with sudo, /run/nestbox, hostname)"
add_line() { # file regex line
  grep -qE "$2" "$ROOTFS/$1" 2>/dev/null || printf '%s\n' "$3" >>"$ROOTFS/$1"
}
add_line etc/group   '^user:'  'user:x:1000:'
add_line etc/gshadow '^user:'  'user:!::'
add_line etc/passwd  '^user:'  'user:x:1000:1000:user:/home/user:/bin/bash'
add_line etc/shadow  '^user:'  "user:*:$(( $(date +%s) / 86400 )):0:99999:7:::"
chmod 0644 "$ROOTFS/etc/passwd" "$ROOTFS/etc/group"
chmod 0640 "$ROOTFS/etc/shadow" "$ROOTFS/etc/gshadow"
chown 0:42 "$ROOTFS/etc/shadow" "$ROOTFS/etc/gshadow" 2>/dev/null || true  # group shadow
mkdir -p "$ROOTFS/home/user"
if [ -d "$ROOTFS/etc/skel" ]; then cp -a "$ROOTFS/etc/skel/." "$ROOTFS/home/user/"; fi
chown -R 1000:1000 "$ROOTFS/home/user"
chmod 0755 "$ROOTFS/home/user"
# Password-less sudo for user, as E2B's base has it (root in a sandbox is what an envd token
# gives anyway). sudo refuses a sudoers file that is not root's and mode 0440.
mkdir -p "$ROOTFS/etc/sudoers.d"
printf 'user ALL=(ALL:ALL) NOPASSWD: ALL\n' >"$ROOTFS/etc/sudoers.d/user"
chown 0:0 "$ROOTFS/etc/sudoers.d/user"
chmod 0440 "$ROOTFS/etc/sudoers.d/user"
mkdir -p "$ROOTFS/run/nestbox"
chmod 0755 "$ROOTFS/run/nestbox"
echo "nestbox" >"$ROOTFS/etc/hostname"
cat >"$ROOTFS/etc/hosts" <<'EOF'
127.0.0.1	localhost
127.0.1.1	nestbox
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
EOF
# Default resolv.conf: the host's non-loopback nameservers (loopback resolvers are
# unreachable from a sandbox's network namespace), else a public resolver. The
# runtime may overwrite or bind-mount it.
rm -f "$ROOTFS/etc/resolv.conf"
{ grep -E '^nameserver[[:space:]]' /etc/resolv.conf 2>/dev/null | grep -vE '[[:space:]](127\.|::1)' || echo "nameserver 1.1.1.1"; } >"$ROOTFS/etc/resolv.conf"
chmod 0644 "$ROOTFS/etc/resolv.conf"
step_done "configure rootfs"

if [ -n "$RECIPE_PACKAGES" ]; then
  # apt inside the new rootfs rather than debootstrap --include: debootstrap's resolver takes
  # more than a package's Depends for large sets (scipy, compilers) and cannot order the
  # configuration of python3-zmq. The .debs are kept in a host cache, bound over the rootfs's.
  step_begin "apt-get install ${RECIPE_PACKAGES//,/ }"
  mkdir -p "$APT_CACHE/partial"
  mount --bind "$APT_CACHE" "$ROOTFS/var/cache/apt/archives"
  APT_CACHE_MOUNT="$ROOTFS/var/cache/apt/archives"
  APT_LOG="$BUILD.apt.log"
  # shellcheck disable=SC2086 # the package list splits on commas into words on purpose
  if ! { chroot "$ROOTFS" apt-get -q update &&
         chroot "$ROOTFS" env DEBIAN_FRONTEND=noninteractive apt-get -q -y install --no-install-recommends \
           ${RECIPE_PACKAGES//,/ }; } >"$APT_LOG" 2>&1; then
    tail -n 30 "$APT_LOG" >&2
    die "apt-get install in the rootfs failed; see $APT_LOG"
  fi
  log "  $(grep -c '^Unpacking ' "$APT_LOG") packages installed"
  rm -f "$APT_LOG"
  umount "$APT_CACHE_MOUNT"
  APT_CACHE_MOUNT=""
  step_done "apt-get install" "$(du -sh "$ROOTFS" | cut -f1)"
fi
if [ -f "$RECIPE_DIR/recipe.sh" ]; then
  step_begin "recipe templates/$NAME"
  recipe_install "$ROOTFS"
  step_done "recipe templates/$NAME"
fi

# --- 3. clean ----------------------------------------------------------------
step_begin "clean apt caches"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/archives/partial/* \
       "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/lib/apt/lists/* \
       "$ROOTFS"/var/log/apt/* "$ROOTFS"/var/log/dpkg.log "$ROOTFS"/var/log/bootstrap.log \
       "$ROOTFS"/debootstrap 2>/dev/null || true
mkdir -p "$ROOTFS/var/lib/apt/lists/partial"
step_done "clean apt caches" "$(du -sh "$ROOTFS" | cut -f1)"

# --- 4. shift ownership ------------------------------------------------------
step_begin "shift ownership by +$SHIFT"
log "  $(python3 "$SCRIPT_DIR/shift-owner.py" "$ROOTFS" "$SHIFT" "$NESTBOX_UID_RANGE")"
step_done "shift ownership"

# --- 5. metadata + atomic install --------------------------------------------
BUILT_AT="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
python3 - "$BUILD/template.json" "$NAME" "$SHIFT" "$NESTBOX_UID_RANGE" "$BUILT_AT" "$SUITE" "$PACKAGES${RECIPE_PACKAGES:+,$RECIPE_PACKAGES}" "$RECIPE_META" <<'EOF'
import json, sys
path, name, shift, rng, built, suite, pkgs, recipe_meta = sys.argv[1:]
# user: processes run as "user" unless a request names another (E2B's default user)
meta = {"name": name, "uidShift": int(shift), "uidRange": int(rng),
        "builtAt": built, "suite": suite, "packages": pkgs.split(","),
        "rootfs": "rootfs", "user": "user"}
meta.update(json.loads(recipe_meta))  # e.g. startCmd, readyCmd, env, workdir
with open(path, "w") as f:
    json.dump(meta, f, indent=2)
    f.write("\n")
EOF
printf '%s' "$BUILD_KEY" >"$BUILD/.complete"
if [ -e "$DEST" ]; then
  # Renamed first, so the new template is in place at once; then removed.
  OLD="$(mktemp -d "$NESTBOX_TEMPLATES_DIR/.old-$NAME.XXXXXX")"
  mv -T "$DEST" "$OLD/t"
  mv -T "$BUILD" "$DEST"
  log "removing the previous $NAME"
  rm -rf --one-file-system "$OLD"
else
  mv -T "$BUILD" "$DEST"
fi
trap - EXIT
log "template $NAME built in $(( $(date +%s) - T_START ))s: $DEST/rootfs"
