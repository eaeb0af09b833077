#!/usr/bin/env bash
# Installs everything mirrorseed, its demo and its test suite need on a fresh Debian 12 machine (run as root):
# system packages from Debian, Python packages into ./.venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
export DEBIAN_FRONTEND=noninteractive
SYSTEM_PACKAGES=(aria2 gnupg dpkg-dev apt-utils zstd fakeroot python3 python3-venv python3-pip jq ca-certificates makepkg pacman-package-manager libarchive-tools chromium fonts-dejavu-core iproute2 shellcheck mktorrent opentracker systemd)
missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet --group dev -e '.[dask]' 2>/dev/null || {
  # pip < 25.1 has no --group: install the dev group from pyproject.toml by hand
  .venv/bin/python -m pip install --quiet -e '.[dask]'
  .venv/bin/python - <<'PY' | xargs .venv/bin/python -m pip install --quiet
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["dependency-groups"]["dev"]))
PY
}
# invoke never writes bytecode: compile once, as an installed package is (~0.1 s off every run)
.venv/bin/python -m compileall -q pipeline tasks.py >/dev/null
echo "bootstrap: system packages and .venv ready" >&2
