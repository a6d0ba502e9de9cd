"""kestrel-loadgen against a real node: a clean run passes its own checks and writes its report
and chart; a node that silently drops one transaction makes it fail; /health tells a live node
from a stalled one."""

from __future__ import annotations

import json
import time

import requests
from eth_account import Account
from web3 import Web3

from conftest import run_loadgen
from e2e_util import send_signed
from kestrel_node import DEV_KEYS
from rpc_proxy import SwallowingProxy

HEALTH_TIMEOUT_S = 30.0
# Contract creation whose init code loops until it runs out of gas: JUMPDEST PUSH1 0 JUMP.
LOOP_INIT_CODE = "0x5b600056"
# Gas for the loop: minutes of execution, so the chain stops committing meanwhile.
LOOP_GAS = 300_000_000_000


def test_clean_run_exits_zero_with_full_report(start_node, tmp_path):
    node = start_node()
    report, chart = tmp_path / "report.json", tmp_path / "chart.svg"
    out = run_loadgen(
        "--rpc", node.url, "--workload", "mixed", "--accounts", "40", "--rate", "400",
        "--duration", "3", "--hot-ratio", "0.2", "--hot-accounts", "3", "--batch", "50",
        "--concurrency", "2", "--report", str(report), "--chart", str(chart),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    r = json.loads(report.read_text())
    f = r["figures"]
    assert f["txs"] == 1200
    assert f["accepted"] == f["included"] == f["finalized"] == 1200, f
    assert f["rejected"] == 0 and f["errors"] == {}, f
    assert f["rates"]["offered_tps"] == 400
    for rate in ("submitted_tps", "included_tps", "finalized_tps"):
        assert f["rates"][rate] > 0, f["rates"]
    for kind in ("latency_to_inclusion", "latency_to_finality"):
        lat = f[kind]
        assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"] <= lat["max_ms"], lat
    # On a single validator a block is final when committed: finality is inclusion.
    assert f["latency_to_finality"]["p99_ms"] >= f["latency_to_inclusion"]["p99_ms"]
    assert sum(s["finalized"] for s in f["timeline"]) == 1200
    assert r["verify"] == {
        "lost": 0, "pending": 0, "stranded": 0, "checked_accounts": 40, "problems": [],
    }
    assert r["signing_seconds"] > 0 and r["workload"] == "mixed"
    assert sum(b["ours"] for b in r["blocks"]) == 1200
    assert chart.read_text().lstrip().startswith("<svg")


def test_silently_dropped_transaction_is_reported_lost(start_node):
    node = start_node()
    with SwallowingProxy(node.url, nth=25) as proxy:
        out = run_loadgen(
            "--rpc", proxy.url, "--workload", "transfer", "--accounts", "20", "--rate", "200",
            "--duration", "1", "--batch", "10", "--concurrency", "1", "--drain-timeout", "4",
        )
    assert proxy.swallowed is not None
    assert out.returncode != 0, out.stdout + out.stderr
    # Exactly the dropped transaction is lost, and named; its sender's later ones wait in the
    # node behind the nonce gap, which is reported apart.
    assert "FAILED: lost 1 transactions" in out.stderr, out.stderr
    assert proxy.swallowed in out.stderr, out.stderr
    assert "still pending in the node" in out.stderr, out.stderr


def health(node) -> requests.Response:
    return requests.get(f"{node.url}/health", timeout=5)


def test_health_is_200_while_following_the_chain(start_node):
    node = start_node()
    r = health(node)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and body["head"] >= 0
    assert body["head_age_ms"] <= body["max_age_ms"] == 5_000
    # JSON-RPC on the same port is untouched.
    assert requests.post(node.url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId",
                                         "params": []}, timeout=5).json()["result"] == "0x539"


def test_health_is_503_when_the_node_stops_committing(start_node):
    # A block gas limit large enough for one transaction that executes for minutes: execution
    # is busy, nothing commits, the head ages.
    node = start_node("--gas-limit", str(10 * LOOP_GAS))
    w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 10}))
    assert health(node).status_code == 200
    sender = Account.from_key(DEV_KEYS[0])
    send_signed(w3, sender, {"data": LOOP_INIT_CODE, "gas": LOOP_GAS})
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    r = health(node)
    while r.status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.5)
        r = health(node)
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["status"] == "stalled" and body["head_age_ms"] > body["max_age_ms"], body
