# shellcheck shell=bash
# Recipe of the code-interpreter-v1 template (sourced by scripts/build-template.sh): base plus a
# Jupyter kernel and the usual data libraries from Debian, and the server on port 49999 that
# speaks what @e2b/code-interpreter sends (server/, installed at /opt/nestbox/code-interpreter).

# Installed without Recommends. ipykernel brings jupyter-client, tornado (the server's HTTP) and
# matplotlib-inline (charts come back as PNG display data). python3-munkres is named so that
# fonttools' "python3-scipy | python3-munkres" takes munkres: scipy would bring pythran, g++,
# boost and python3-dev (about 400 MB).
RECIPE_PACKAGES="python3-ipykernel,python3-jupyter-client,python3-matplotlib,python3-pandas,python3-numpy,python3-munkres"

# startCmd runs for as long as the sandbox does; readyCmd exits 0 once the server answers (it
# listens only after the default Python context's kernel is up).
RECIPE_META='{
  "startCmd": "cd /home/user && exec python3 -u /opt/nestbox/code-interpreter/main.py",
  "readyCmd": "curl -sf --max-time 2 -o /dev/null http://127.0.0.1:49999/health",
  "workdir": "/home/user"
}'

recipe_install() {
  local rootfs="$1" dest="$1/opt/nestbox/code-interpreter"
  install -d -m 0755 "$rootfs/opt/nestbox" "$dest"
  install -m 0644 "$RECIPE_DIR"/server/*.py "$dest/"
  chroot "$rootfs" python3 -m compileall -q /opt/nestbox/code-interpreter >/dev/null
  # Checks that the libraries import, and builds matplotlib's font cache in user's home (a
  # first chart would otherwise take seconds).
  chroot --userspec=1000:1000 "$rootfs" env -i HOME=/home/user PATH=/usr/bin:/bin MPLBACKEND=Agg \
    python3 -c 'import ipykernel, jupyter_client, tornado, numpy, pandas, matplotlib.pyplot' \
    || die "the code interpreter's Python libraries do not import in the new rootfs"
}
