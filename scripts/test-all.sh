#!/usr/bin/env bash
# Sets up and runs every test: Rust unit/property tests, then the end-to-end tests against the
# release binary (web3.py + the crash-recovery test with pytest, viem with node's test runner).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
START=$SECONDS

step() { echo; echo "=== [$((SECONDS - START))s] $* ==="; }

step "setup"
bash scripts/setup.sh
# CI machines' disks are shared and sometimes nearly full (a run died with ENOSPC at 333 s):
# without debug info the release tree is far smaller, and the free space goes into the log.
if [ "${CI:-}" = "true" ]; then export CARGO_PROFILE_RELEASE_DEBUG="${CARGO_PROFILE_RELEASE_DEBUG:-false}"; fi
df -h "$ROOT" | tail -1 | awk '{print "disk: " $4 " free of " $2}'

step "cargo build --release --bin kestrel --bin kestrel-loadgen --bin kestrel-wsbench"
cargo build --release --bin kestrel --bin kestrel-loadgen --bin kestrel-wsbench
export KESTREL_BIN="${KESTREL_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/kestrel}"

step "cargo test --workspace --release"
cargo test --workspace --release -- --skip sim_seeded_drivers

# The store's trie and cache, and the pool, check their invariants with debug_assert! (sorted
# writes, every cached branch built where a key changed; the pool's indexes after every
# mutation): off in the release build above, so once in debug.
step "invariants: cargo test -p kestrel-storage -p kestrel-pipeline (debug build: debug_assert! on)"
cargo test -p kestrel-storage -p kestrel-pipeline

# Its own step, so its time shows: 1,000 seeds (KESTREL_SIM_SEEDS for more), docs/CONSENSUS.md.
# --workspace keeps the features the step above built with, so nothing is rebuilt.
step "driver simulation: seeded runs of real validator drivers (node/src/validator/sim)"
cargo test --workspace --release --bin kestrel sim_seeded_drivers -- --nocapture

# Both fixture sets, through each executor (docs/CONFORMANCE.md).
FIXTURES="${KESTREL_FIXTURES:-$ROOT/../shared/fixtures/ethereum-tests $ROOT/../shared/fixtures/blockchain-tests-sample}"
for executor in "sequential" "parallel --threads 1" "parallel --threads 2"; do
  step "Ethereum conformance: BlockchainTests through the import path (--executor $executor)"
  # shellcheck disable=SC2086 # the executor's flags and the folders are word lists
  cargo run --release --bin ef-tests -- --executor $executor $FIXTURES
done

step "end-to-end: pytest tests/e2e (web3.py, crash recovery)"
tests/e2e/.venv/bin/python -m pytest -q tests/e2e

step "RPC limits: pytest tests/rpc_limits (slowloris, body memory, receipt batches, execution fairness against a real node)"
tests/e2e/.venv/bin/python -m pytest -q tests/rpc_limits

step "metrics: pytest tests/metrics (real Prometheus, promtool, Grafana dashboard)"
tests/e2e/.venv/bin/python -m pytest -q tests/metrics

step "load generator: pytest tests/loadgen (kestrel-loadgen, lost-transaction proxy, /health)"
tests/e2e/.venv/bin/python -m pytest -q tests/loadgen

step "pool attacks: pytest tests/pool_attacks (free block space on the dev node and a 4-validator testnet, a jammed account, queued expiry)"
tests/e2e/.venv/bin/python -m pytest -q tests/pool_attacks

step "testnet: pytest tests/testnet (4 validators on loopback and in network namespaces: agreement, a crash and catch-up, no quorum; a restart under a pre-auth flood)"
tests/e2e/.venv/bin/python -m pytest -q tests/testnet

step "Debian package: pytest tests/deb (cargo deb from the release binary, dpkg into a scratch root, systemd-analyze verify)"
tests/e2e/.venv/bin/python -m pytest -q tests/deb

step "torture: pytest tests/torture (SIGKILL the dev node and testnet validators at random under load, a wiped validator replays the chain; a 20 s flood)"
tests/e2e/.venv/bin/python -m pytest -q tests/torture

step "end-to-end: node --test (viem, ethers)"
(cd tests/e2e && node --test ./*.test.mjs)

step "fuzz: scripts/fuzz.sh (every cargo-fuzz target, ${FUZZ_SECONDS:-30} s each, from the committed seeds)"
bash scripts/fuzz.sh

df -h "${CARGO_TARGET_DIR:-$ROOT/target}" | tail -1 | awk '{print "disk: " $4 " free after the run"}'
du -sh "${CARGO_TARGET_DIR:-$ROOT/target}" | awk '{print "target dir: " $1}'
step "all tests passed in $((SECONDS - START))s"
