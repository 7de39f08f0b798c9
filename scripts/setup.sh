#!/usr/bin/env bash
# One-shot host setup for Nestbox (idempotent; a few seconds when everything is cached):
#   1. scripts/install-deps.sh        apt packages, CRIU >= 4.2 in a private prefix
#      scripts/install-s3-server.sh   a local S3 server (Swift with s3api) in a private prefix, for tests
#   2. scripts/build-template.sh base  the base sandbox template, then code-interpreter-v1
#      (base + Jupyter kernel + data libraries + the server @e2b/code-interpreter talks to)
#   3. cargo build --release           in sandbox-init/ (when sandbox-init/Cargo.toml exists)
#   4. npm ci / npm install            when node_modules is missing or stale
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
# shellcheck source=lib.sh
. "$SCRIPT_DIR/lib.sh"

require_root_linux_cgroups "$@"
T_START=$(date +%s.%N)

"$SCRIPT_DIR/install-deps.sh"
"$SCRIPT_DIR/install-s3-server.sh"
"$SCRIPT_DIR/build-template.sh" base
"$SCRIPT_DIR/build-template.sh" code-interpreter-v1

# --- sandbox-init (Rust, std only) --------------------------------------------
if [ -x "${HOME:-/root}/.cargo/bin/cargo" ] && ! command -v cargo >/dev/null; then
  export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
if [ -f "$REPO_DIR/sandbox-init/Cargo.toml" ]; then
  step_begin "cargo build --release (sandbox-init)"
  # cargo's own freshness check makes this ~0.1 s when nothing changed.
  (cd "$REPO_DIR/sandbox-init" && cargo build --release --quiet) 2>&1 | sed 's/^/[nestbox]   cargo: /' >&2
  [ "${PIPESTATUS[0]}" -eq 0 ] || die "cargo build failed in sandbox-init"
  step_done "cargo build --release (sandbox-init)"
else
  step_cached "cargo build" "skipped: sandbox-init/Cargo.toml does not exist yet"
fi

# --- node modules ---------------------------------------------------------------
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  die "node and npm (Node.js >= 20) are required; install them (e.g. from NodeSource) and re-run"
fi
NODE_MAJOR="$(node -p 'process.versions.node.split(".")[0]')"
[ "$NODE_MAJOR" -ge 20 ] || die "Node.js >= 20 is required (found $(node --version))"
cd "$REPO_DIR"
if [ -f package.json ]; then
  need=""
  if [ ! -d node_modules ]; then
    need="node_modules missing"
  elif [ -f package-lock.json ] && { [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; }; then
    need="package-lock.json newer than node_modules"
  elif [ ! -f package-lock.json ] && [ package.json -nt node_modules ]; then
    need="package.json newer than node_modules"
  fi
  if [ -n "$need" ]; then
    if [ -f package-lock.json ]; then cmd=(npm ci --no-audit --no-fund); else cmd=(npm install --no-audit --no-fund); fi
    step_begin "${cmd[*]} ($need)"
    "${cmd[@]}" 2>&1 | tail -n 5 | sed 's/^/[nestbox]   npm: /' >&2
    [ "${PIPESTATUS[0]}" -eq 0 ] || die "${cmd[*]} failed"
    [ -f package-lock.json ] || touch node_modules
    step_done "${cmd[0]} ${cmd[1]}"
  else
    step_cached "node modules" "$REPO_DIR/node_modules"
  fi
fi

# The CLI's build (bin/nestbox falls back to the sources through tsx while it is missing or stale).
if [ -f "$REPO_DIR/scripts/build-cli.mjs" ] && [ -d "$REPO_DIR/node_modules/esbuild" ]; then
  node "$REPO_DIR/scripts/build-cli.mjs" --if-stale || die "building the CLI (scripts/build-cli.mjs) failed"
fi

log "setup complete in $(awk -v a="$T_START" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1fs", b-a}'):"
log "  NESTBOX_HOME       $NESTBOX_HOME"
log "  criu wrapper       $NESTBOX_BIN_DIR/criu  (put $NESTBOX_BIN_DIR first on PATH for runc)"
log "  template base      $NESTBOX_TEMPLATES_DIR/base/rootfs"
log "  template code-interpreter-v1  $NESTBOX_TEMPLATES_DIR/code-interpreter-v1/rootfs"
if [ -f "$REPO_DIR/sandbox-init/Cargo.toml" ]; then
  log "  sandbox-init       $REPO_DIR/sandbox-init/target/release/"
fi
log "  next: scripts/raw-smoke.sh (host checkpoint/restore smoke test)"
