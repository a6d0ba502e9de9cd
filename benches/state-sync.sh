#!/usr/bin/env bash
# A new full node joins by state sync a chain with a large state and a long history: time to
# join and bytes moved (BENCHMARKS.md, "State sync").
#
#   benches/state-sync.sh                    # 2 validators, 1,000,000 funded accounts and the
#                                            # ERC-20 token holding a slot for each (a
#                                            # `kestrel-loadgen --genesis-out` genesis), 20 ms
#                                            # blocks until block 10,000, then the full node
#   VALIDATORS=4 ACCOUNTS=100000 BLOCKS=2000 benches/state-sync.sh
#   BLOCK_TIME_MS, SEED, OUT, SKIP_BUILD=1, KESTREL_BIN, KESTREL_LOADGEN_BIN
#   LOAD_RATE=200 LOAD_SECONDS=60            # a light `--workload mixed` load (ETH and token
#   LOAD_ACCOUNTS=10000                      # transfers among the genesis's first 10,000
#                                            # senders) early in the chain; LOAD_RATE=0: none
#
# What the sync moves is the state (and the few blocks after its base); the light load only
# makes the chain's blocks and state not genesis's alone. The full node starts on an empty datadir with
# `--sync state`; "joined" is its head within 10 blocks of validator 0's, after which its blocks
# are compared with validator 0's. Take the lock first, as for every
# testnet run on a shared host: `flock /tmp/kestrel-quiet benches/state-sync.sh`.
#
# Writes into $OUT (default target/state-sync-bench/<time>): genesis.json, the testnet directory
# (configs, logs), full-metrics.txt (the full node's /metrics once joined) and summary.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"

VALIDATORS="${VALIDATORS:-2}"
ACCOUNTS="${ACCOUNTS:-1000000}"
BLOCKS="${BLOCKS:-10000}"
BLOCK_TIME_MS="${BLOCK_TIME_MS:-20}"
JOIN_TIMEOUT_S="${JOIN_TIMEOUT_S:-1800}"
LOAD_RATE="${LOAD_RATE:-200}"
LOAD_SECONDS="${LOAD_SECONDS:-60}"
LOAD_ACCOUNTS="${LOAD_ACCOUNTS:-10000}"
SEED="${SEED:-1}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="${OUT:-$TARGET/state-sync-bench/$(date -u +%Y%m%dT%H%M%SZ)}"
# shellcheck source=benches/ports.sh
source "$ROOT/benches/ports.sh"
refuse_ports_in_use state-sync.sh

[ -n "${SKIP_BUILD:-}" ] || cargo build --release --bin kestrel --bin kestrel-loadgen
KESTREL="${KESTREL_BIN:-$TARGET/release/kestrel}"
LOADGEN="${KESTREL_LOADGEN_BIN:-$TARGET/release/kestrel-loadgen}"
NET="$OUT/testnet"
mkdir -p "$OUT"
echo "state-sync: results in $OUT"

"$KESTREL" init-testnet --validators "$VALIDATORS" --full-nodes 1 --out "$NET" --scrypt-light \
  --base-p2p-port "$BASE_P2P_PORT" --base-rpc-port "$BASE_RPC_PORT" \
  --base-metrics-port "$BASE_METRICS_PORT" >"$OUT/init-testnet.log"
"$LOADGEN" --genesis-out "$OUT/genesis.json" --workload transfer --accounts "$ACCOUNTS" --seed "$SEED"
python3 - "$OUT/genesis.json" "$NET/genesis.json" <<'EOF'
import json, sys
bench, net = sys.argv[1], sys.argv[2]
genesis = json.load(open(bench))
genesis["kestrel"] = json.load(open(net))["kestrel"]
json.dump(genesis, open(net, "w"))
EOF
for config in "$NET"/validator-*/config.toml "$NET"/full-*/config.toml; do
  sed -i "s/^\[ordering\]$/[ordering]\nblock_time_ms = $BLOCK_TIME_MS/" "$config"
done

FULL="$NET/full-0"
FULL_RPC="http://127.0.0.1:$((BASE_RPC_PORT + VALIDATORS))"
FULL_METRICS="http://127.0.0.1:$((BASE_METRICS_PORT + VALIDATORS))/metrics"
stop_all() {
  local pid
  for pid in "$NET"/*/node.pid; do
    [ -f "$pid" ] && kill -TERM "$(cat "$pid")" 2>/dev/null || true
  done
  for pid in "$NET"/*/node.pid; do
    [ -f "$pid" ] || continue
    while kill -0 "$(cat "$pid")" 2>/dev/null; do sleep 0.2; done
  done
}
trap stop_all EXIT
# The validators only (deploy/testnet.sh would start the full node with them).
for ((i = 0; i < VALIDATORS; i++)); do
  vdir="$NET/validator-$i"
  setsid "$KESTREL" node --config "$vdir/config.toml" >>"$vdir/node.log" 2>&1 </dev/null &
  echo $! >"$vdir/node.pid"
done

rpc() { # url method params
  curl -sf -H 'content-type: application/json' \
    -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$2\",\"params\":$3}" "$1"
}
head_of() { rpc "$1" eth_blockNumber '[]' | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["result"], 16))'; }
V0="http://127.0.0.1:$BASE_RPC_PORT"
if [ "$LOAD_RATE" -gt 0 ]; then
  until [ "$(head_of "$V0" 2>/dev/null || echo 0)" -ge 1 ]; do sleep 1; done
  echo "state-sync: a light load, $LOAD_RATE tx/s for ${LOAD_SECONDS}s (loadgen.log)"
  "$LOADGEN" --rpc "$V0" --workload mixed --genesis-funded --accounts "$LOAD_ACCOUNTS" --seed "$SEED" \
    --rate "$LOAD_RATE" --duration "$LOAD_SECONDS" --quiet --report "$OUT/loadgen.json" \
    >"$OUT/loadgen.log" 2>&1 &
  LOAD_PID=$!
fi
echo "state-sync: waiting for block $BLOCKS"
until [ "$(head_of "$V0" 2>/dev/null || echo 0)" -ge "$BLOCKS" ]; do sleep 5; done
if [ -n "${LOAD_PID:-}" ]; then
  wait "$LOAD_PID" || echo "state-sync: the load generator failed (loadgen.log)" >&2
fi

started=$(date +%s.%N)
setsid "$KESTREL" node --config "$FULL/config.toml" --sync state >>"$FULL/node.log" 2>&1 </dev/null &
echo $! >"$FULL/node.pid"
deadline=$(( $(date +%s) + JOIN_TIMEOUT_S ))
# Joined: its head within 10 blocks of validator 0's (at 20 ms blocks /health's 10 block times
# are under the headers' 1 s timestamp resolution, so /health is no measure here).
joined_yet() {
  local full
  full=$(head_of "$FULL_RPC" 2>/dev/null) || return 1
  [ "$full" -ge $(( $(head_of "$V0") - 10 )) ]
}
until joined_yet; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "state-sync: not joined in ${JOIN_TIMEOUT_S}s" >&2; exit 1; }
  kill -0 "$(cat "$FULL/node.pid")" || { echo "state-sync: the full node exited" >&2; exit 1; }
  sleep 0.2
done
joined=$(date +%s.%N)
curl -sf "$FULL_METRICS" >"$OUT/full-metrics.txt"

# Its blocks after the base are validator 0's (hash and state root).
base=$(awk '/^kestrel_sync_target_block /{print int($2)}' "$OUT/full-metrics.txt")
check=$(( $(head_of "$FULL_RPC") ))
for n in $((base + 1)) "$check"; do
  a=$(rpc "$FULL_RPC" eth_getBlockByNumber "[\"$(printf '0x%x' "$n")\",false]" | python3 -c 'import json,sys; b=json.load(sys.stdin)["result"]; print(b["hash"], b["stateRoot"])')
  b=$(rpc "$V0" eth_getBlockByNumber "[\"$(printf '0x%x' "$n")\",false]" | python3 -c 'import json,sys; b=json.load(sys.stdin)["result"]; print(b["hash"], b["stateRoot"])')
  [ "$a" = "$b" ] || { echo "state-sync: block $n differs: full $a, validator $b" >&2; exit 1; }
done

python3 - "$OUT" "$started" "$joined" "$base" "$check" "$ACCOUNTS" "$VALIDATORS" "$BLOCK_TIME_MS" "$FULL/node.log" "$NET/genesis.json" "$LOAD_RATE" "$LOAD_SECONDS" <<'EOF'
import json, re, sys
out, started, joined, base, check, accounts, validators, block_time_ms, log, genesis, load_rate, load_seconds = sys.argv[1:]
# The loadgen's ERC-20 token (0x7070...70): the one account whose storage runs over many parts.
token = next((v for a, v in json.load(open(genesis))["alloc"].items()
              if a.lower().removeprefix("0x") == "70" * 20), {})
metrics = {}
for line in open(f"{out}/full-metrics.txt"):
    if line.startswith("#") or not line.strip():
        continue
    name, value = line.rsplit(" ", 1)
    metrics[name] = float(value)
done = next((l for l in open(log) if "state sync done" in l), "")
elapsed = re.search(r"elapsed_s=([0-9.]+)", done)
summary = {
    "accounts": int(accounts),
    "validators": int(validators),
    "block_time_ms": int(block_time_ms),
    "load_tx_per_s": int(load_rate),
    "load_seconds": int(load_seconds) if int(load_rate) > 0 else 0,
    "token_slots_at_genesis": len(token.get("storage", {})),
    "base_block": int(base),
    "checked_block": int(check),
    "join_seconds": round(float(joined) - float(started), 1),
    "state_sync_seconds": float(elapsed.group(1)) if elapsed else None,
    "state_sync_bytes": int(metrics.get("kestrel_sync_state_bytes_total", 0)),
    "received_bytes_total": int(sum(v for k, v in metrics.items()
                                    if k.startswith("kestrel_net_received_bytes_total"))),
    "chunks": int(metrics.get("kestrel_sync_state_chunks", 0)),
    "parts": int(metrics.get("kestrel_sync_state_parts_total", 0)),
    "accounts_written": int(metrics.get("kestrel_sync_state_accounts_total", 0)),
}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
EOF
