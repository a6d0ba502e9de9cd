"""Submission-to-finality latency on a 4-validator loopback testnet at light load.

Starts a fresh testnet (real `kestrel` processes), sends one transfer at a time to validator 0
every INTERVAL_S, and times eth_sendRawTransaction → the receipt served by validator 0 (RPC
serves committed blocks only, so a receipt means finalized, executed and durable). Prints the
median, p90, p99 and max.

    tests/e2e/.venv/bin/python tests/testnet/finality.py [--txs 200] [--block-time-ms 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from testnet import Sender, Testnet, wait_until

POLL_S = 0.005
RECEIPT_TIMEOUT_S = 30.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--txs", type=int, default=200)
    ap.add_argument("--interval-s", type=float, default=0.1)
    ap.add_argument("--block-time-ms", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        net = Testnet(Path(tmp), 4, ["--block-time-ms", str(args.block_time_ms)])
        try:
            net.start_all()
            wait_until(lambda: net[0].head() >= 5, 30, "first blocks")
            sender = Sender(0)
            latencies: list[float] = []
            lock = threading.Lock()

            def measure(raw: bytes) -> None:
                t0 = time.monotonic()
                h = net[0].call("eth_sendRawTransaction", ["0x" + raw.hex()])
                deadline = t0 + RECEIPT_TIMEOUT_S
                while time.monotonic() < deadline:
                    if net[0].receipt(h):
                        with lock:
                            latencies.append(time.monotonic() - t0)
                        return
                    time.sleep(POLL_S)
                raise TimeoutError(f"no receipt for {h}")

            threads = []
            for _ in range(args.txs):
                t = threading.Thread(target=measure, args=(sender.transfer("0x000000000000000000000000000000000000bEEF", 1),))
                t.start()
                threads.append(t)
                time.sleep(args.interval_s)
            for t in threads:
                t.join()
            lat = sorted(latencies)
            q = statistics.quantiles(lat, n=100)
            print(f"{len(lat)} txs, block time {args.block_time_ms} ms, one every {args.interval_s}s: "
                  f"median {statistics.median(lat) * 1000:.0f} ms, p90 {q[89] * 1000:.0f} ms, "
                  f"p99 {q[98] * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms")
        finally:
            net.stop_all()


if __name__ == "__main__":
    main()
