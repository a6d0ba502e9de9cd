# Sourced by the testnet benches: the loopback ports they bind, and a refusal to start over a
# port in use (two runs on one host would share these ports, and one run's load generator would
# feed the other's validators). Ports away from the defaults, so that a testnet or dev node
# already running is not in the way.
BASE_P2P_PORT="${BASE_P2P_PORT:-31303}"
BASE_RPC_PORT="${BASE_RPC_PORT:-18545}"
BASE_METRICS_PORT="${BASE_METRICS_PORT:-19100}"

# refuse_ports_in_use NAME: exits 1, naming the port, if any of the three is taken.
refuse_ports_in_use() {
  local port
  for port in "$BASE_P2P_PORT" "$BASE_RPC_PORT" "$BASE_METRICS_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$1: port $port is in use (another testnet run?); set BASE_P2P_PORT, BASE_RPC_PORT and BASE_METRICS_PORT" >&2
      exit 1
    fi
  done
}
