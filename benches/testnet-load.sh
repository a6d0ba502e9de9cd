#!/usr/bin/env bash
# Throughput of a 4-validator chain on this host: `kestrel init-testnet` validators (real
# processes, BFT over TCP on loopback, every validator executing and committing every block) with
# the benchmark's genesis (100,000 funded senders and the ERC-20 token), loaded by
# `kestrel-loadgen` spread over the validators' JSON-RPC endpoints.
#
#   benches/testnet-load.sh                          # 4 validators, 500 ms blocks, 5,250 tx/s, 60 s
#   BLOCK_TIME_MS=200 RATE=5250 benches/testnet-load.sh
#   DOWN=3 DOWN_AT_S=30 DOWN_FOR_S=300 DURATION=480 RATE=2000 benches/testnet-load.sh
#                                                    # validator 3 stopped 30 s into the load for
#                                                    # 5 minutes, then restarted under the load:
#                                                    # it must catch up and vote again
#   FULL_NODES=1 LOAD_TO=full RATE=2000 benches/testnet-load.sh
#                                                    # a full node follows the validators and
#                                                    # takes all the load on its RPC (receipts
#                                                    # served by it); LOAD_TO=validator sends it
#                                                    # all to validator 0 instead, the default
#                                                    # (validators) spreads it over them
#   EXECUTOR=sequential BLOCK_TIME_MS=200 RATE=5500 benches/testnet-load.sh
#                                                    # every node's `[execution] executor`
#                                                    # (default: the node's own, parallel)
#   VALIDATORS, ACCOUNTS, DURATION, WORKLOAD, PAIRS, CONCURRENCY, BATCH, SEED, OUT, SKIP_BUILD=1,
#   KESTREL_BIN, KESTREL_LOADGEN_BIN
#
# Writes into $OUT (default target/testnet-bench/<time>): genesis.json, the testnet directory
# (configs, logs), kestrel.json/.svg (the loadgen report, finality as validator 0 serves it),
# metrics-<i>.txt (each validator's /metrics after the run; full-<j>.txt, each full node's),
# cpu-seconds.txt (CPU seconds of each node and the loadgen) and summary.json. Exits non-zero if
# the loadgen's checks fail (a lost transaction or a wrong balance) or the nodes' heads differ at
# the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"

VALIDATORS="${VALIDATORS:-4}"
FULL_NODES="${FULL_NODES:-0}"
LOAD_TO="${LOAD_TO:-validators}"
ACCOUNTS="${ACCOUNTS:-100000}"
RATE="${RATE:-5250}"
DURATION="${DURATION:-60}"
WORKLOAD="${WORKLOAD:-mixed}"
SEED="${SEED:-1}"
# The load as benches/e2e.sh offers it.
PAIRS="${PAIRS:-10}"
CONCURRENCY="${CONCURRENCY:-4}"
BATCH="${BATCH:-1000}"
BLOCK_TIME_MS="${BLOCK_TIME_MS:-500}"
# 300M gas, about 10,000 of the load's transactions: it does not bind at the offered rate, and
# a backlog drains over several blocks that every validator decodes and executes within a
# round. 2,000M let one block take 46,000 transactions, whose decoding and execution on four
# validators sharing two cores outlasted the round timeouts: rounds failed, the backlog grew
# and the next blocks were larger still (BENCHMARKS.md, issue 17's four-validator rows of
# 2026-12-05).
GAS_LIMIT="${GAS_LIMIT:-300000000}"
EXECUTOR="${EXECUTOR:-}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="${OUT:-$TARGET/testnet-bench/$(date -u +%Y%m%dT%H%M%SZ)}"
# shellcheck source=benches/ports.sh
source "$ROOT/benches/ports.sh"
refuse_ports_in_use testnet-load.sh

[ -n "${SKIP_BUILD:-}" ] || cargo build --release --bin kestrel --bin kestrel-loadgen
KESTREL="${KESTREL_BIN:-$TARGET/release/kestrel}"
LOADGEN="${KESTREL_LOADGEN_BIN:-$TARGET/release/kestrel-loadgen}"
NET="$OUT/testnet"
mkdir -p "$OUT"
echo "testnet-load: results in $OUT"

"$KESTREL" init-testnet --validators "$VALIDATORS" --full-nodes "$FULL_NODES" --out "$NET" --scrypt-light \
  --base-p2p-port "$BASE_P2P_PORT" --base-rpc-port "$BASE_RPC_PORT" \
  --base-metrics-port "$BASE_METRICS_PORT" >"$OUT/init-testnet.log"
"$LOADGEN" --genesis-out "$OUT/genesis.json" --workload "$WORKLOAD" --pairs "$PAIRS" \
  --accounts "$ACCOUNTS" --seed "$SEED" --genesis-gas-limit "$GAS_LIMIT"
# The benchmark's accounts with the testnet's validator set.
python3 - "$OUT/genesis.json" "$NET/genesis.json" <<'EOF'
import json, sys
bench, net = sys.argv[1], sys.argv[2]
genesis = json.load(open(bench))
genesis["kestrel"] = json.load(open(net))["kestrel"]
json.dump(genesis, open(net, "w"))
EOF
for config in "$NET"/validator-*/config.toml "$NET"/full-*/config.toml; do
  [ -f "$config" ] || continue
  sed -i "s/^\[ordering\]$/[ordering]\nblock_time_ms = $BLOCK_TIME_MS\ngas_limit = $GAS_LIMIT/" "$config"
  [ -z "$EXECUTOR" ] || sed -i "s/^\[execution\]$/[execution]\nexecutor = \"$EXECUTOR\"/" "$config"
done

stop_testnet() { KESTREL_BIN="$KESTREL" deploy/testnet.sh stop "$NET" >/dev/null 2>&1 || true; }
trap stop_testnet EXIT
FULL_NODES="$FULL_NODES" KESTREL_BIN="$KESTREL" deploy/testnet.sh "$VALIDATORS" "$NET"

RPCS=()
case "$LOAD_TO" in
  validators) for ((i = 0; i < VALIDATORS; i++)); do RPCS+=(--rpc "http://127.0.0.1:$((BASE_RPC_PORT + i))"); done ;;
  validator) RPCS=(--rpc "http://127.0.0.1:$BASE_RPC_PORT") ;;
  # Full nodes take the RPC ports after the validators' (init-testnet).
  full)
    [ "$FULL_NODES" -ge 1 ] || { echo "LOAD_TO=full needs FULL_NODES=1 or more" >&2; exit 2; }
    RPCS=(--rpc "http://127.0.0.1:$((BASE_RPC_PORT + VALIDATORS))") ;;
  *) echo "LOAD_TO is validators, validator or full, not $LOAD_TO" >&2; exit 2 ;;
esac
cpu_seconds() {
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo null
}
# With DOWN: stop that validator during the load and start it again (catch-up under load).
DOWN="${DOWN:-}"
if [ -n "$DOWN" ]; then
  (
    vdir="$NET/validator-$DOWN"
    sleep "${DOWN_AT_S:-30}"
    kill -TERM "$(cat "$vdir/node.pid")"
    while kill -0 "$(cat "$vdir/node.pid")" 2>/dev/null; do sleep 0.1; done
    echo "$(date +%s.%N) stopped" >"$OUT/down.txt"
    sleep "${DOWN_FOR_S:-300}"
    setsid "$KESTREL" node --config "$vdir/config.toml" >>"$vdir/node.log" 2>&1 </dev/null &
    echo $! >"$vdir/node.pid"
    echo "$(date +%s.%N) restarted" >>"$OUT/down.txt"
  ) &
  DOWN_PID=$!
fi
set +e
/usr/bin/time -f "%U %S" -o "$OUT/loadgen-cpu.txt" \
  "$LOADGEN" "${RPCS[@]}" --workload "$WORKLOAD" --pairs "$PAIRS" --accounts "$ACCOUNTS" \
  --seed "$SEED" --rate "$RATE" --duration "$DURATION" --hot-ratio 0 \
  --concurrency "$CONCURRENCY" --batch "$BATCH" --genesis-funded --drain-timeout 120 --label testnet \
  --report "$OUT/kestrel.json" --chart "$OUT/kestrel.svg"
LOADGEN_RC=$?
set -e
[ -z "$DOWN" ] || wait "$DOWN_PID"
: >"$OUT/cpu-seconds.txt"
for ((i = 0; i < VALIDATORS; i++)); do
  echo "validator-$i $(cpu_seconds "$(cat "$NET/validator-$i/node.pid")")" >>"$OUT/cpu-seconds.txt"
  curl -sf "http://127.0.0.1:$((BASE_METRICS_PORT + i))/metrics" >"$OUT/metrics-$i.txt" || true
done
for ((j = 0; j < FULL_NODES; j++)); do
  echo "full-$j $(cpu_seconds "$(cat "$NET/full-$j/node.pid")")" >>"$OUT/cpu-seconds.txt"
  curl -sf "http://127.0.0.1:$((BASE_METRICS_PORT + VALIDATORS + j))/metrics" >"$OUT/full-$j.txt" || true
done
echo "loadgen $(tail -1 "$OUT/loadgen-cpu.txt" | awk '{print $1 + $2}')" >>"$OUT/cpu-seconds.txt"

[ -z "$DOWN" ] || echo "$DOWN" >"$OUT/down-validator.txt"
# Every node's block at validator 0's head: the same hash and state root.
python3 - "$OUT" "$VALIDATORS" "$BASE_RPC_PORT" "$LOADGEN_RC" "$FULL_NODES" "$LOAD_TO" <<'EOF'
import json, sys, time, urllib.request
from pathlib import Path
out, n, base, rc = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
full_nodes, load_to = int(sys.argv[5]), sys.argv[6]
def call(i, method, params):
    req = urllib.request.Request(f"http://127.0.0.1:{base + i}", method="POST",
        data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode(),
        headers={"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=10))["result"]
head = int(call(0, "eth_blockNumber", []), 16)
blocks = []
for i in range(n + full_nodes):
    # The others may be behind validator 0: a block or two, or a restarted one still executing
    # what it synced.
    for _ in range(1200):
        b = call(i, "eth_getBlockByNumber", [hex(head), False])
        if b:
            break
        time.sleep(0.1)
    blocks.append(b and (b["hash"], b["stateRoot"]))
report = json.loads((out / "kestrel.json").read_text())
f = report["figures"]
summary = {
    "validators": n, "full_nodes": full_nodes, "load_to": load_to, "head": head, "heads_equal": len(set(blocks)) == 1 and blocks[0] is not None,
    "txs": f["txs"], "finalized": f["finalized"], "lost": report["verify"]["lost"],
    **{k: round(v, 1) if v else v for k, v in f["rates"].items()},
    "finality_p50_ms": (f["latency_to_finality"] or {}).get("p50_ms"),
    "finality_p99_ms": (f["latency_to_finality"] or {}).get("p99_ms"),
    "checks_passed": not report["verify"]["problems"] and rc == 0,
    "cpu_seconds": {k: None if v == "null" else round(float(v), 1) for k, v in
                    (line.split() for line in (out / "cpu-seconds.txt").read_text().splitlines())},
}
down = out / "down.txt"
if down.exists():
    # The restarted validator's process counts only its votes since the restart.
    i = int(next(l for l in (out / "down-validator.txt").read_text().split()))
    votes = [l.split()[1] for l in (out / f"metrics-{i}.txt").read_text().splitlines()
             if l.startswith("kestrel_consensus_votes_total ")]
    stamps = dict(reversed(l.split()) for l in down.read_text().splitlines())
    summary["down"] = {"validator": i, "seconds": round(float(stamps["restarted"]) - float(stamps["stopped"]), 1),
                       "votes_after_restart": int(float(votes[0])) if votes else 0}
    summary["checks_passed"] = summary["checks_passed"] and summary["down"]["votes_after_restart"] > 0
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
sys.exit(0 if summary["heads_equal"] and summary["checks_passed"] else 1)
EOF
