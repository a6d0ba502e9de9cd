"""Finalized blocks per second on a 4-validator loopback testnet, all up, then with validator 3
killed (SIGKILL): how much a crashed validator costs the chain.

    tests/e2e/.venv/bin/python tests/testnet/one_down.py [BLOCK_TIME_MS]
"""

import sys
import tempfile
import time
from pathlib import Path

from testnet import Testnet, wait_until

bt = int(sys.argv[1]) if len(sys.argv) > 1 else 200
with tempfile.TemporaryDirectory() as tmp:
    net = Testnet(Path(tmp), 4, ["--block-time-ms", str(bt)])
    try:
        net.start_all()
        wait_until(lambda: net[0].head() >= 5, 30, "first blocks")
        def rate(secs):
            h0, t0 = net[0].head(), time.monotonic()
            time.sleep(secs)
            return (net[0].head() - h0) / (time.monotonic() - t0)
        print(f"block time {bt} ms: all up {rate(10):.2f} blocks/s", flush=True)
        net[3].kill9()
        time.sleep(1)
        print(f"one down {rate(20):.2f} blocks/s", flush=True)
    finally:
        net.stop_all()
