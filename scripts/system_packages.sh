#!/usr/bin/env bash
# The system tools the project needs beyond its Python packages: make and Python 3.11 (every command), a C
# compiler (the native forest kernel),
# Node.js and npm (the Node.js client test), Prometheus and promtool (the monitoring tests), PostgreSQL (the
# registry test against an MLflow server on a real database). Missing ones are installed with apt-get when this runs as
# root, as CI does; otherwise it says what to install. `make install` and `.ci/run` run it.
set -euo pipefail

python=${PYTHON:-python3.11}
packages=()
command -v make > /dev/null || packages+=(make)
if ! command -v "$python" > /dev/null; then
    packages+=(python3.11 python3.11-venv)
elif ! "$python" -c "import ensurepip, venv" 2> /dev/null; then
    packages+=(python3.11-venv)
fi
# A C compiler for the native forest kernel (server/forest_kernel.c).
command -v cc > /dev/null || packages+=(gcc libc6-dev)
command -v node > /dev/null || packages+=(nodejs)
command -v npm > /dev/null || packages+=(npm)
command -v prometheus > /dev/null && command -v promtool > /dev/null || packages+=(prometheus)
# Debian keeps the server binaries off PATH, under /usr/lib/postgresql/<major>/bin.
compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null || command -v initdb > /dev/null || packages+=(postgresql)
[ ${#packages[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get > /dev/null; then
    echo "installing ${packages[*]} with apt-get"
    # A fresh machine has no package lists yet, or stale ones.
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" > /dev/null
    exit 0
fi
echo "missing system packages: ${packages[*]} (Debian: sudo apt-get install ${packages[*]})." >&2
echo "Without them the tests that need them are skipped; under CI (CI=true) they fail." >&2
ci=${CI:-}
case "${ci,,}" in 1 | true | yes) exit 1 ;; esac
