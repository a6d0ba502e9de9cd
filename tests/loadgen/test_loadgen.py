"""kestrel-loadgen against a real node: a clean run passes its own checks and writes its report
and chart; a swap run deploys its pairs, and its checks replay the swaps; a node that silently
drops one transaction makes it fail; /health tells a live node from a stalled one."""

from __future__ import annotations

import json
import time

import pytest
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
# What the loadgen gives each pair and each sender of both tokens (kestrel_benches::workload).
PAIR_RESERVE = 10**12
TOKEN_BALANCE = 10**6
# Pair.sol getReserves(), Token.sol balanceOf(address).
GET_RESERVES = "0x0902f1ac"
BALANCE_OF = "0x70a08231"


def every_tx_included(out, report, txs: int) -> dict:
    """The report of a run that exited 0 having had all its `txs` transactions accepted,
    included and finalized, none refused."""
    assert out.returncode == 0, out.stdout + out.stderr
    r = json.loads(report.read_text())
    f = r["figures"]
    assert f["txs"] == txs
    assert f["accepted"] == f["included"] == f["finalized"] == txs, f
    assert f["rejected"] == 0 and f["errors"] == {}, f
    assert sum(b["ours"] for b in r["blocks"]) == txs
    return r


def test_clean_run_exits_zero_with_full_report(start_node, tmp_path):
    node = start_node()
    report, chart = tmp_path / "report.json", tmp_path / "chart.svg"
    out = run_loadgen(
        "--rpc", node.url, "--workload", "mixed", "--accounts", "40", "--rate", "400",
        "--duration", "3", "--hot-ratio", "0.2", "--hot-accounts", "3", "--batch", "50",
        "--concurrency", "2", "--report", str(report), "--chart", str(chart),
    )
    r = every_tx_included(out, report, 1200)
    f = r["figures"]
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
        "lost": 0, "pending": 0, "stranded": 0, "checked_accounts": 40, "checked_pairs": 0,
        "problems": [],
    }
    assert r["signing_seconds"] > 0 and r["workload"] == "mixed"
    assert chart.read_text().lstrip().startswith("<svg")


def eth_call(w3: Web3, to: str, data: str) -> bytes:
    return bytes(w3.eth.call({"to": Web3.to_checksum_address(to), "data": data}))


def test_swap_run_deploys_pairs_and_checks_their_reserves(start_node, tmp_path):
    node = start_node()
    report = tmp_path / "report.json"
    out = run_loadgen(
        "--rpc", node.url, "--workload", "swap", "--pairs", "3", "--accounts", "40",
        "--rate", "400", "--duration", "3", "--hot-ratio", "0.2", "--batch", "50",
        "--concurrency", "2", "--report", str(report),
    )
    r = every_tx_included(out, report, 1200)
    assert r["figures"]["rates"]["included_tps"] > 0, r["figures"]["rates"]
    # The sampled senders' ETH, nonces and both token balances, and the three pairs' reserves
    # (replayed in block order), are what the included swaps imply.
    assert r["verify"] == {
        "lost": 0, "pending": 0, "stranded": 0, "checked_accounts": 40, "checked_pairs": 3,
        "problems": [],
    }
    assert r["workload"] == "swap" and r["pairs"] == 3
    # Independently of the loadgen: every pair traded, holds what its reserves say, and its
    # constant product grew by the 0.3% fees.
    w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 10}))
    c = r["contracts"]
    assert len(c["pairs"]) == 3
    for pair in c["pairs"]:
        raw = eth_call(w3, pair, GET_RESERVES)
        r0, r1 = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big")
        assert (r0, r1) != (PAIR_RESERVE, PAIR_RESERVE), "pair never traded"
        assert r0 * r1 > PAIR_RESERVE**2
        word = bytes(12) + bytes.fromhex(pair[2:])
        held = [int.from_bytes(eth_call(w3, t, BALANCE_OF + word.hex()), "big")
                for t in (c["token_a"], c["token_b"])]
        assert held == [r0, r1]


# The `nth` eth_sendRawTransaction the proxy swallows: the 5th of the run, after the set-up's.
# transfer, 20 senders: 20 fundings. swap, 20 senders, 2 pairs: 2 token and 2 pair deployments,
# 3 per pair (reserves of both tokens, sync), 3 per sender (ETH and both tokens), then 2
# approvals per sender: 4 + 6 + 60 + 40.
@pytest.mark.parametrize("workload,setup_txs", [("transfer", 20), ("swap", 110)])
def test_silently_dropped_transaction_is_reported_lost(start_node, workload, setup_txs):
    node = start_node()
    with SwallowingProxy(node.url, nth=setup_txs + 5) as proxy:
        out = run_loadgen(
            "--rpc", proxy.url, "--workload", workload, "--pairs", "2", "--accounts", "20",
            "--rate", "200", "--duration", "1", "--batch", "10", "--concurrency", "1",
            "--drain-timeout", "4",
        )
    assert proxy.swallowed is not None
    assert out.returncode != 0, out.stdout + out.stderr
    # Exactly the dropped transaction is lost, and named; its sender's later ones wait in the
    # node behind the nonce gap, which is reported apart.
    assert "FAILED: lost 1 transactions" in out.stderr, out.stderr
    assert proxy.swallowed in out.stderr, out.stderr
    assert "still pending in a node" in out.stderr, out.stderr


def test_stranded_transactions_fail_the_run(start_node):
    # The 5th transaction of the run is refused for good: its sender's later nonces are accepted
    # by the node but can never execute.
    node = start_node()
    with SwallowingProxy(node.url, nth=20 + 5, refuse=True) as proxy:
        out = run_loadgen(
            "--rpc", proxy.url, "--workload", "transfer", "--accounts", "20", "--rate", "200",
            "--duration", "1", "--batch", "10", "--concurrency", "1", "--drain-timeout", "3",
        )
    assert proxy.swallowed is not None
    assert out.returncode != 0, out.stdout + out.stderr
    assert "FAILED: 9 accepted transactions were stranded" in out.stderr, out.stderr


def test_one_sender_open_loop_arrives_in_nonce_order(start_node, tmp_path):
    # Concurrent batches of one sender used to arrive out of order and jam its queue.
    node = start_node()
    report = tmp_path / "report.json"
    out = run_loadgen(
        "--rpc", node.url, "--workload", "transfer", "--accounts", "1", "--txs", "2000",
        "--rate", "0", "--batch", "100", "--concurrency", "4", "--report", str(report),
    )
    every_tx_included(out, report, 2000)


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
