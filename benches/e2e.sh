#!/usr/bin/env bash
# End-to-end benchmark: the same pre-signed load against a single Kestrel validator
# (`kestrel node --dev`) and against anvil, one after the other, from the same genesis.
#
#   benches/e2e.sh                       # 100,000 senders, transfer/ERC-20 mix, 60 s at 10,250 tx/s
#   DURATION=10 ACCOUNTS=10000 RATE=5000 benches/e2e.sh
#   SKIP_ANVIL=1 benches/e2e.sh          # Kestrel only
#   GENESIS_EXTRA_ACCOUNTS=9900000 SKIP_ANVIL=1 benches/e2e.sh  # the senders in a 10M-account state
#   WORKLOAD=swap PAIRS=10 benches/e2e.sh # Uniswap-V2-style swaps over 10 pairs
#   KESTREL_BIN, KESTREL_LOADGEN_BIN     # other binaries than $CARGO_TARGET_DIR/release/*
#   KESTREL_ARGS="--executor parallel"   # more `kestrel node` flags (word-split)
#   KEEP_DATADIR=1                       # keep $OUT/kestrel-data (e.g. for `kestrel replay`)
#   WS_SUBSCRIBERS=1000 benches/e2e.sh   # also 1,000 WebSocket subscribers (kestrel-wsbench) on
#                                        # the Kestrel node during the load: ws.json, wsbench.log
#   KESTREL_WSBENCH_BIN                  # another kestrel-wsbench than $CARGO_TARGET_DIR/release/
#
# Writes into $OUT (default target/e2e-bench/<time>): genesis.json, kestrel.json/.svg,
# anvil.json/.svg (kestrel-loadgen reports and charts), kestrel-metrics.txt (the node's /metrics
# after the run), kestrel-rss.tsv (the node's VmRSS and RssAnon every second), cpu-seconds.txt
# (CPU seconds of the node, the load generator and kestrel-wsbench over the Kestrel run: on a
# 2-core machine the tools' share is the node's loss), logs, and summary.json with both side by
# side. Exits non-zero if the Kestrel run fails its checks (a lost
# transaction or a wrong balance) or, with WS_SUBSCRIBERS, kestrel-wsbench fails its own (a head
# or log not delivered, the slow subscriber not closed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"

ACCOUNTS="${ACCOUNTS:-100000}"
RATE="${RATE:-10250}"
DURATION="${DURATION:-60}"
WORKLOAD="${WORKLOAD:-mixed}"
HOT_RATIO="${HOT_RATIO:-0}"
PAIRS="${PAIRS:-10}"
CONCURRENCY="${CONCURRENCY:-4}"
BATCH="${BATCH:-1000}"
SEED="${SEED:-1}"
# Large enough that neither node's block gas limit binds at the offered rate.
GAS_LIMIT="${GAS_LIMIT:-2000000000}"
BLOCK_TIME_MS="${BLOCK_TIME_MS:-500}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="${OUT:-$TARGET/e2e-bench/$(date -u +%Y%m%dT%H%M%SZ)}"
ANVIL="${ANVIL:-$ROOT/tests/e2e/node_modules/.bin/anvil}"
START_TIMEOUT_S=120

mkdir -p "$OUT"
echo "e2e: results in $OUT"

# SKIP_BUILD=1 uses the binaries as they are (e.g. while the tree is being edited).
WS_SUBSCRIBERS="${WS_SUBSCRIBERS:-}"
WSBENCH_BUILD=()
[ -z "$WS_SUBSCRIBERS" ] || WSBENCH_BUILD=(--bin kestrel-wsbench)
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --bin kestrel --bin kestrel-loadgen "${WSBENCH_BUILD[@]}"
KESTREL="${KESTREL_BIN:-$TARGET/release/kestrel}"
LOADGEN="${KESTREL_LOADGEN_BIN:-$TARGET/release/kestrel-loadgen}"
WSBENCH="${KESTREL_WSBENCH_BIN:-$TARGET/release/kestrel-wsbench}"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until the JSON-RPC endpoint answers eth_chainId, or the process dies.
wait_rpc() {
  local url="$1" pid="$2"
  for _ in $(seq $((START_TIMEOUT_S * 10))); do
    kill -0 "$pid" 2>/dev/null || { echo "e2e: node exited during start-up" >&2; return 1; }
    curl -sf -X POST -H 'content-type: application/json' \
      --data '{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}' "$url" >/dev/null && return 0
    sleep 0.1
  done
  echo "e2e: $url did not answer within ${START_TIMEOUT_S}s" >&2
  return 1
}

# CPU seconds (user + system) a live process has used: where the two cores went.
cpu_seconds() {
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo null
}

stop() {
  local pid="$1"
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do stop "$p"; done; }
trap cleanup EXIT

LOAD=(--workload "$WORKLOAD" --pairs "$PAIRS" --accounts "$ACCOUNTS" --seed "$SEED" --rate "$RATE"
      --duration "$DURATION" --hot-ratio "$HOT_RATIO" --concurrency "$CONCURRENCY"
      --batch "$BATCH" --genesis-funded --drain-timeout "${DRAIN_TIMEOUT:-120}")

"$LOADGEN" --genesis-out "$OUT/genesis.json" --workload "$WORKLOAD" --pairs "$PAIRS" \
  --accounts "$ACCOUNTS" --seed "$SEED" \
  --genesis-gas-limit "$GAS_LIMIT" --genesis-extra-accounts "${GENESIS_EXTRA_ACCOUNTS:-0}"

# The node's memory every second until it exits: "seconds VmRSS_kB RssAnon_kB".
sample_rss() {
  local pid="$1" t=0
  while [ -r "/proc/$pid/status" ]; do
    awk -v t="$t" '/^VmRSS:/ {r=$2} /^RssAnon:/ {a=$2} END {if (r) print t, r, a}' \
      "/proc/$pid/status" 2>/dev/null || true
    sleep 1; t=$((t + 1))
  done
}

# (a) Kestrel, single validator (the dev chain's setup; --genesis replaces --dev's accounts).
PORT="$(free_port)"; METRICS="$(free_port)"
WS_ARGS=()
if [ -n "$WS_SUBSCRIBERS" ]; then
  # Room for every subscriber, the slow one and a few more.
  WSPORT="$(free_port)"
  WS_ARGS=(--ws-port "$WSPORT" --ws-connections-max "$((WS_SUBSCRIBERS + 16))")
fi
"$KESTREL" node --genesis "$OUT/genesis.json" --datadir "$OUT/kestrel-data" \
  --http-port "$PORT" --metrics "127.0.0.1:$METRICS" --block-time-ms "$BLOCK_TIME_MS" \
  --gas-limit "$GAS_LIMIT" "${WS_ARGS[@]}" ${KESTREL_ARGS:-} >"$OUT/kestrel.log" 2>&1 &
KPID=$!; PIDS+=("$KPID")
sample_rss "$KPID" >"$OUT/kestrel-rss.tsv" &
wait_rpc "http://127.0.0.1:$PORT" "$KPID"
echo "e2e: kestrel up on $PORT"
WS_RC=skipped
if [ -n "$WS_SUBSCRIBERS" ]; then
  "$WSBENCH" --ws "ws://127.0.0.1:$WSPORT" --rpc "http://127.0.0.1:$PORT" \
    --subscribers "$WS_SUBSCRIBERS" --accounts "$ACCOUNTS" --seed "$SEED" --pid "$KPID" \
    --report "$OUT/ws.json" >"$OUT/wsbench.log" 2>&1 &
  WSPID=$!; PIDS+=("$WSPID")
  # The load starts once every subscriber is subscribed.
  for _ in $(seq $((START_TIMEOUT_S * 10))); do
    grep -q "subscribers ready" "$OUT/wsbench.log" && break
    kill -0 "$WSPID" 2>/dev/null || break
    sleep 0.1
  done
  echo "e2e: $(grep -m1 "subscribers ready" "$OUT/wsbench.log" || echo "kestrel-wsbench did not start")"
fi
set +e
/usr/bin/time -f "%U %S" -o "$OUT/loadgen-cpu.txt" \
  "$LOADGEN" --rpc "http://127.0.0.1:$PORT" "${LOAD[@]}" --label kestrel \
  --report "$OUT/kestrel.json" --chart "$OUT/kestrel.svg"
KESTREL_RC=$?
echo "kestrel $(cpu_seconds "$KPID")" >"$OUT/cpu-seconds.txt"
echo "loadgen $(tail -1 "$OUT/loadgen-cpu.txt" | awk '{print $1 + $2}')" >>"$OUT/cpu-seconds.txt"
if [ -n "$WS_SUBSCRIBERS" ]; then
  echo "wsbench $(cpu_seconds "$WSPID")" >>"$OUT/cpu-seconds.txt"
  # kestrel-wsbench stops at SIGTERM: it checks, reports and exits.
  kill -TERM "$WSPID" 2>/dev/null
  wait "$WSPID"; WS_RC=$?
  tail -1 "$OUT/wsbench.log"
fi
set -e
curl -sf "http://127.0.0.1:$METRICS/metrics" >"$OUT/kestrel-metrics.txt" || true
stop "$KPID"
du -sh "$OUT/kestrel-data" | cut -f1 >"$OUT/kestrel-datadir-size.txt"
[ -n "${KEEP_DATADIR:-}" ] || rm -rf "$OUT/kestrel-data"

# (b) anvil, same genesis and load. Interval mining at the same block time; one slot per epoch
# so its `finalized` tag trails `latest` by two blocks instead of 64.
ANVIL_RC=skipped
if [ -z "${SKIP_ANVIL:-}" ]; then
  APORT="$(free_port)"
  "$ANVIL" --init "$OUT/genesis.json" --port "$APORT" --hardfork prague \
    --block-time "$(python3 -c "print($BLOCK_TIME_MS / 1000)")" --gas-limit "$GAS_LIMIT" \
    --slots-in-an-epoch 1 --no-request-size-limit \
    --prune-history >"$OUT/anvil.log" 2>&1 &
  APID=$!; PIDS+=("$APID")
  # anvil's result is a reference: its failure is reported, it does not fail the benchmark.
  set +e
  if wait_rpc "http://127.0.0.1:$APORT" "$APID"; then
    echo "e2e: anvil up on $APORT"
    "$LOADGEN" --rpc "http://127.0.0.1:$APORT" "${LOAD[@]}" --label anvil \
      --report "$OUT/anvil.json" --chart "$OUT/anvil.svg"
    ANVIL_RC=$?
  else
    ANVIL_RC=start-failed
  fi
  set -e
  stop "$APID"
fi

# Side by side.
python3 - "$OUT" "$KESTREL_RC" "$ANVIL_RC" "$WS_RC" <<'EOF'
import json, sys
from pathlib import Path
out, krc, arc, wsrc = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
runs = {n: json.loads((out / f"{n}.json").read_text()) for n in ("kestrel", "anvil")
        if (out / f"{n}.json").exists()}
def row(r):
    f = r["figures"]
    return {
        "txs": f["txs"], "accepted": f["accepted"], "included": f["included"],
        "finalized": f["finalized"], "lost": r["verify"]["lost"],
        "pending_at_end": r["verify"].get("pending", 0),
        **{k: round(v, 1) if v else v for k, v in f["rates"].items()},
        "inclusion_p50_ms": (f["latency_to_inclusion"] or {}).get("p50_ms"),
        "inclusion_p99_ms": (f["latency_to_inclusion"] or {}).get("p99_ms"),
        "finality_p50_ms": (f["latency_to_finality"] or {}).get("p50_ms"),
        "finality_p99_ms": (f["latency_to_finality"] or {}).get("p99_ms"),
        "signing_tps": round(r["signing_tps"]),
        "checks_passed": not r["verify"]["problems"],
    }
summary = {n: row(r) for n, r in runs.items()}
summary["exit_codes"] = {"kestrel": krc, "anvil": arc, "ws": wsrc}
rss = [line.split() for line in (out / "kestrel-rss.tsv").read_text().splitlines()
       if len(line.split()) == 3] if (out / "kestrel-rss.tsv").exists() else []
if rss:
    summary["kestrel_memory"] = {
        "vm_rss_max_mib": round(max(int(r[1]) for r in rss) / 1024),
        "rss_anon_max_mib": round(max(int(r[2]) for r in rss) / 1024),
        "vm_rss_end_mib": round(int(rss[-1][1]) / 1024),
    }
if (out / "cpu-seconds.txt").exists():
    # Of the whole machine's two cores, over the Kestrel run (start-up included).
    summary["cpu_seconds"] = {n: None if v == "null" else round(float(v), 1) for n, v in
                              (line.split() for line in
                               (out / "cpu-seconds.txt").read_text().splitlines())}
if (out / "ws.json").exists():
    ws = json.loads((out / "ws.json").read_text())
    lat = ws.get("head_latency") or {}
    summary["ws"] = {
        "subscribers": ws["subscribers"], "connected": ws["connected"],
        "blocks": ws["last_block"] - ws["first_block"] + 1,
        "subscribers_heads_ok": ws["subscribers_heads_ok"],
        "subscribers_logs_ok": ws["subscribers_logs_ok"],
        "logs_received": ws["logs_received"], "logs_expected": ws["logs_expected"],
        "head_latency_p50_ms": lat.get("p50_ms"), "head_latency_p99_ms": lat.get("p99_ms"),
        "head_latency_max_ms": lat.get("max_ms"),
        "slow_subscriber_closed": bool((ws.get("slow") or {}).get("passed")),
        "slow_subscriber_reasons": (ws.get("slow") or {}).get("closed"),
        "problems": ws["problems_total"], "passed": ws["passed"],
    }
if "kestrel" in runs and "anvil" in runs and summary["anvil"]["included_tps"]:
    summary["included_tps_ratio_kestrel_over_anvil"] = round(
        summary["kestrel"]["included_tps"] / summary["anvil"]["included_tps"], 2)
(out / "summary.json").write_text(json.dumps(summary, indent=2))
names = [n for n in ("kestrel", "anvil") if n in runs]
keys = list(summary[names[0]].keys())
print(f"{'':22}" + "".join(f"{n:>14}" for n in names))
for k in keys:
    print(f"{k:22}" + "".join(f"{str(summary[n][k]):>14}" for n in names))
if "included_tps_ratio_kestrel_over_anvil" in summary:
    print(f"included TPS ratio kestrel/anvil: {summary['included_tps_ratio_kestrel_over_anvil']}")
for key in ("kestrel_memory", "cpu_seconds", "ws"):
    if key in summary:
        print(f"{key}: {json.dumps(summary[key])}")
EOF
[ "$WS_RC" = skipped ] || [ "$WS_RC" = 0 ] || [ "$KESTREL_RC" != 0 ] || exit "$WS_RC"
exit "$KESTREL_RC"
