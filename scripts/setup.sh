#!/usr/bin/env bash
# Installs what building and testing Kestrel needs on a fresh Debian machine that has Rust.
# Idempotent: each step is skipped when its result is already there.
#
#   scripts/setup.sh          build deps + the end-to-end test deps (Python venv, npm packages,
#                             prometheus/promtool for tests/metrics)
#   scripts/setup.sh build    build deps only (what scripts/dev.sh needs)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode="${1:-all}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
apt_updated=0

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  echo "setup: apt-get install ${missing[*]}"
  if [ "$apt_updated" -eq 0 ]; then
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Build: bindgen (libmdbx) needs libclang; the C parts (mdbx, blst, c-kzg) need a C compiler.
apt_install libclang-dev pkg-config
command -v cc >/dev/null || apt_install build-essential
command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust (rustup) first" >&2; exit 1; }

[ "$mode" = "build" ] && exit 0

# End-to-end tests, Python side: a venv in tests/e2e/.venv (git-ignored).
E2E=tests/e2e
command -v python3 >/dev/null || apt_install python3
if [ ! -x "$E2E/.venv/bin/python" ]; then
  python3 -m venv "$E2E/.venv" 2>/dev/null || { apt_install python3-venv; rm -rf "$E2E/.venv"; python3 -m venv "$E2E/.venv"; }
fi
req_sum="$(sha256sum "$E2E/requirements.txt" | cut -d' ' -f1)"
if [ "$(cat "$E2E/.venv/.requirements.sha256" 2>/dev/null)" != "$req_sum" ]; then
  echo "setup: pip install -r $E2E/requirements.txt"
  "$E2E/.venv/bin/python" -m pip install -q --disable-pip-version-check -r "$E2E/requirements.txt"
  echo "$req_sum" > "$E2E/.venv/.requirements.sha256"
fi

# End-to-end tests, JavaScript side: viem and solc-js from the lock file.
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
lock_sum="$(sha256sum "$E2E/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$E2E/node_modules/.package-lock.sha256" 2>/dev/null)" != "$lock_sum" ]; then
  echo "setup: npm ci in $E2E"
  (cd "$E2E" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" > "$E2E/node_modules/.package-lock.sha256"
fi
# Metrics tests (tests/metrics): a real Prometheus server and promtool, from the Debian package.
command -v prometheus >/dev/null && command -v promtool >/dev/null || apt_install prometheus
# Debian package tests (tests/deb): cargo-deb builds the .deb, systemd-analyze verifies its unit.
# A pinned cargo-deb (about a minute to compile once); the systemd package only for its tools,
# nothing is started.
if ! command -v cargo-deb >/dev/null || [ "$(cargo-deb --version 2>/dev/null)" != "cargo-deb 3.8.0" ]; then
  echo "setup: cargo install cargo-deb"
  cargo install cargo-deb --locked --version 3.8.0 --quiet
fi
command -v systemd-analyze >/dev/null || apt_install systemd
# Fuzzing (scripts/fuzz.sh): cargo-fuzz from crates.io; the nightly toolchain it builds with
# comes with the machine image.
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version "^0.13"
echo "setup: done"
