#!/usr/bin/env bash
# Builds and starts a single-validator dev chain (chain id 1337, JSON-RPC on 127.0.0.1:8545).
# Extra arguments go to `kestrel node --dev`, e.g. scripts/dev.sh --datadir /tmp/kestrel --block-time-ms 250
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh build
exec cargo run --release --bin kestrel -- node --dev "$@"
