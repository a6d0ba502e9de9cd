#!/usr/bin/env bash
# A testnet of N validators (and FULL_NODES full nodes) on loopback, each with its own data dir,
# p2p, RPC and metrics ports.
#
#   deploy/testnet.sh N [DIR]      write DIR (default ./testnet) with `kestrel init-testnet` unless
#                                  it exists, then start N validators in the background
#   FULL_NODES=K deploy/testnet.sh N [DIR]   and K full nodes following them
#   deploy/testnet.sh stop [DIR]   stop them: SIGTERM, then wait for each to finish its blocks
#
# Per validator: DIR/validator-<i>/{config.toml, keystore.json, password.txt, data/, node.log,
# node.pid}; per full node: DIR/full-<j>/{config.toml, data/, node.log, node.pid}.
# KESTREL_BIN picks the binary (default: target/release/kestrel, else `kestrel` on PATH).
# Ports: p2p 30303+i, RPC 8545+i, metrics 9100+i (BASE_P2P_PORT, BASE_RPC_PORT, BASE_METRICS_PORT);
# full node j: RPC and metrics N+j past the bases.
set -euo pipefail

# How long a validator gets to open its database and answer JSON-RPC, and to shut down.
START_TIMEOUT_S=${START_TIMEOUT_S:-30}
STOP_TIMEOUT_S=${STOP_TIMEOUT_S:-60}

usage() {
    sed -n '2,15s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${KESTREL_BIN:-}
if [[ -z $bin ]]; then
    if [[ -x $repo/target/release/kestrel ]]; then
        bin=$repo/target/release/kestrel
    else
        bin=$(command -v kestrel || true)
    fi
fi

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Sends SIGTERM to every running node of $1, then waits for each to exit.
stop_all() {
    local dir=$1 pidfile pid stopped=0 waited
    for pidfile in "$dir"/validator-*/node.pid "$dir"/full-*/node.pid; do
        [[ -f $pidfile ]] || continue
        if running "$pidfile"; then kill -TERM "$(cat "$pidfile")"; fi
    done
    for pidfile in "$dir"/validator-*/node.pid "$dir"/full-*/node.pid; do
        [[ -f $pidfile ]] || continue
        pid=$(cat "$pidfile")
        waited=0
        while kill -0 "$pid" 2>/dev/null; do
            if ((waited >= STOP_TIMEOUT_S * 10)); then
                echo "node $(dirname "$pidfile") (pid $pid) still running after ${STOP_TIMEOUT_S}s; SIGKILL" >&2
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.1
            waited=$((waited + 1))
        done
        rm -f "$pidfile"
        stopped=$((stopped + 1))
    done
    echo "stopped $stopped node(s) in $dir"
}

# eth_chainId over JSON-RPC; prints the answer, fails while the node does not answer.
chain_id() {
    curl -sf --max-time 1 -X POST -H 'content-type: application/json' \
        --data '{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}' "http://$1"
}

[[ $# -ge 1 && $# -le 2 ]] || usage
if [[ $1 == stop ]]; then
    stop_all "${2:-testnet}"
    exit 0
fi
[[ $1 =~ ^[1-9][0-9]*$ ]] || usage
n=$1
dir=${2:-testnet}
full_nodes=${FULL_NODES:-0}
[[ $full_nodes =~ ^[0-9]+$ ]] || usage
[[ -n $bin && -x $bin ]] || {
    echo "no kestrel binary: run 'cargo build --release --bin kestrel' or set KESTREL_BIN" >&2
    exit 1
}

for pidfile in "$dir"/validator-*/node.pid "$dir"/full-*/node.pid; do
    if running "$pidfile"; then
        echo "$dir already has running nodes; run '$0 stop $dir' first" >&2
        exit 1
    fi
done
if [[ -f $dir/genesis.json ]]; then
    have=$(find "$dir" -maxdepth 1 -name 'validator-*' -type d | wc -l)
    have_full=$(find "$dir" -maxdepth 1 -name 'full-*' -type d | wc -l)
    if ((have != n || have_full != full_nodes)); then
        echo "$dir holds a testnet of $have validators and $have_full full nodes, not $n and $full_nodes;" \
            "remove it or choose another DIR" >&2
        exit 1
    fi
    echo "restarting the $n-validator testnet in $dir"
else
    "$bin" init-testnet --validators "$n" --full-nodes "$full_nodes" --out "$dir" \
        --base-p2p-port "${BASE_P2P_PORT:-30303}" \
        --base-rpc-port "${BASE_RPC_PORT:-8545}" \
        --base-metrics-port "${BASE_METRICS_PORT:-9100}"
fi

nodes=()
for ((i = 0; i < n; i++)); do nodes+=("validator-$i"); done
for ((j = 0; j < full_nodes; j++)); do nodes+=("full-$j"); done
for node in "${nodes[@]}"; do
    vdir=$dir/$node
    # setsid: a Ctrl-C in this terminal must not reach the nodes; `stop` ends them.
    setsid "$bin" node --config "$vdir/config.toml" >>"$vdir/node.log" 2>&1 </dev/null &
    echo $! >"$vdir/node.pid"
done

# Wait until every node answers JSON-RPC, or one of them exits.
failed=()
for node in "${nodes[@]}"; do
    vdir=$dir/$node
    port=$(sed -n 's/^http_port = \([0-9]*\)$/\1/p' "$vdir/config.toml")
    waited=0
    until chain_id "127.0.0.1:$port" >/dev/null; do
        if ! running "$vdir/node.pid" || ((waited >= START_TIMEOUT_S * 10)); then
            failed+=("$node")
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
done

if ((${#failed[@]} > 0)); then
    for node in "${failed[@]}"; do
        echo "$node did not start; from $dir/$node/node.log:" >&2
        # The error, without a backtrace RUST_BACKTRACE may have added; else the log's end.
        grep -m1 -A3 '^Error' "$dir/$node/node.log" >&2 || tail -n 5 "$dir/$node/node.log" >&2
    done
    stop_all "$dir" >/dev/null
    exit 1
fi

for node in "${nodes[@]}"; do
    vdir=$dir/$node
    port=$(sed -n 's/^http_port = \([0-9]*\)$/\1/p' "$vdir/config.toml")
    echo "$node  pid $(cat "$vdir/node.pid")  rpc http://127.0.0.1:$port  log $vdir/node.log"
done
echo "stop with: $0 stop $dir"
