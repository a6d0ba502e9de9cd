"""WebSocket subscribers under load, the short version of `WS_SUBSCRIBERS=1000 benches/e2e.sh`:
kestrel-wsbench holds 100 subscribers (newHeads plus a sparse Transfer-event filter each) and one
slow subscriber that never reads, on a node that kestrel-loadgen keeps busy for 10 s. Every
subscriber gets every head in order and exactly the logs eth_getLogs gives for its filter; the
slow one's subscriptions are closed with the reason and nobody else's are."""

from __future__ import annotations

import json
import signal
import subprocess
import time

from kestrel_node import KestrelNode, free_port, kestrel_bin, run_loadgen

SUBSCRIBERS = 100
ACCOUNTS = 2_000
SEED = 7
RATE = 300
DURATION_S = 10
READY_TIMEOUT_S = 60
WSBENCH_TIMEOUT_S = 120


def wsbench_bin():
    path = kestrel_bin().parent / "kestrel-wsbench"
    assert path.exists(), f"{path} not found: cargo build --release --bin kestrel-wsbench"
    return path


def test_hundred_subscribers_and_a_slow_one_under_load(tmp_path):
    genesis = tmp_path / "genesis.json"
    out = run_loadgen("--genesis-out", str(genesis), "--workload", "mixed",
                      "--accounts", str(ACCOUNTS), "--seed", str(SEED), timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    ws_port = free_port()
    # A small per-connection buffer, so the slow subscriber is closed within a light load.
    node = KestrelNode(datadir=tmp_path / "data", log_dir=tmp_path, genesis=genesis,
                       extra_args=["--ws-port", str(ws_port), "--block-time-ms", "250",
                                   "--ws-buffer-messages", "64"])
    node.start()
    report = tmp_path / "ws.json"
    log = tmp_path / "wsbench.log"
    bench = None
    try:
        with open(log, "w") as log_file:
            bench = subprocess.Popen(
                [str(wsbench_bin()), "--ws", f"ws://127.0.0.1:{ws_port}", "--rpc", node.url,
                 "--subscribers", str(SUBSCRIBERS), "--accounts", str(ACCOUNTS),
                 "--seed", str(SEED), "--pid", str(node.proc.pid), "--report", str(report),
                 "--slow-pending-subscriptions", "8"],
                stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "subscribers ready" not in log.read_text():
            assert bench.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        load = run_loadgen("--rpc", node.url, "--workload", "mixed", "--accounts", str(ACCOUNTS),
                           "--seed", str(SEED), "--genesis-funded", "--rate", str(RATE),
                           "--duration", str(DURATION_S), "--batch", "100",
                           timeout=DURATION_S + 120)
        assert load.returncode == 0, load.stdout + load.stderr
        bench.send_signal(signal.SIGTERM)
        rc = bench.wait(WSBENCH_TIMEOUT_S)
    finally:
        if bench is not None and bench.poll() is None:
            bench.kill()
        node.stop()
    text = log.read_text()
    r = json.loads(report.read_text())
    assert rc == 0 and r["passed"], text[-5000:]
    assert r["connected"] == SUBSCRIBERS
    # 10 s of load at 4 blocks a second, and the set-up around it.
    assert r["last_block"] - r["first_block"] + 1 >= 4 * DURATION_S, r
    assert r["subscribers_heads_ok"] == SUBSCRIBERS
    assert r["heads_received"] == r["heads_expected"] == \
        SUBSCRIBERS * (r["last_block"] - r["first_block"] + 1)
    assert r["subscribers_logs_ok"] == SUBSCRIBERS
    # Sparse filters, yet some events for most of them: the check compared something.
    assert r["logs_expected"] == r["logs_received"] >= SUBSCRIBERS // 2, r
    assert r["exact_log_checks"] == 4
    slow = r["slow"]
    assert slow["passed"] and slow["closed"], slow
    assert all("subscriber too slow" in reason for reason in slow["closed"]), slow
    lat = r["head_latency"]
    assert lat["samples"] > 0 and lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"], lat
    mem = r["memory"]
    assert mem["samples"] and mem["vm_rss_max_kb"] >= mem["rss_anon_max_kb"] > 0, mem
    assert text.strip().splitlines()[-1].startswith("wsbench: PASS"), text[-2000:]
