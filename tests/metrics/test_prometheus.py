"""A real Prometheus server scrapes a real node: the chain and the transaction counter advance in
Prometheus, and the alert rules of deploy/prometheus/alerts.yml load and evaluate cleanly."""

from __future__ import annotations

import time

from eth_account import Account
from kestrel_node import DEV_KEYS
from metrics_util import send_transfers

SCRAPE_TIMEOUT_S = 60.0  # first successful scrape (Prometheus scrapes every 1 s)
ADVANCE_TIMEOUT_S = 60.0  # the new blocks and transactions show up in Prometheus
RULES_TIMEOUT_S = 30.0
TXS = 3

EXPECTED_ALERTS = {
    "KestrelNodeDown",
    "KestrelNodeStalled",
    "KestrelStateRootMismatch",
    "KestrelDiskSpaceLow",
    "KestrelDatabaseNearlyFull",
    "KestrelMempoolNearlyFull",
    "KestrelRpcErrorRateHigh",
}


def test_prometheus_sees_blocks_and_transactions(node, w3, prometheus):
    prometheus.wait_for('up{job="kestrel"}', lambda v: v == 1, SCRAPE_TIMEOUT_S,
                        "Prometheus did not scrape the node")
    block0 = prometheus.wait_for("kestrel_chain_committed_block", lambda v: v >= 0,
                                 SCRAPE_TIMEOUT_S, "no kestrel_chain_committed_block")
    txs0 = prometheus.wait_for("kestrel_execution_txs_total", lambda v: v >= 0,
                               SCRAPE_TIMEOUT_S, "no kestrel_execution_txs_total")

    receipts = send_transfers(w3, Account.from_key(DEV_KEYS[0]), TXS)
    last_block = max(r["blockNumber"] for r in receipts)

    block = prometheus.wait_for("kestrel_chain_committed_block",
                                lambda v: v > block0 and v >= last_block, ADVANCE_TIMEOUT_S,
                                f"committed block did not pass {max(block0, last_block - 1)}")
    txs = prometheus.wait_for("kestrel_execution_txs_total", lambda v: v >= txs0 + TXS,
                              ADVANCE_TIMEOUT_S, f"execution txs did not reach {txs0 + TXS}")
    assert block <= w3.eth.block_number
    # Prometheus' view of the node agrees with its JSON-RPC and its own job labels.
    series = prometheus.query("kestrel_chain_committed_block")
    assert series[0]["metric"]["job"] == "kestrel"
    assert series[0]["metric"]["instance"] == f"127.0.0.1:{node.metrics_port}"
    # Rates and histograms work on the scraped data.
    tps = prometheus.value("sum(rate(kestrel_execution_txs_total[1m]))")
    assert tps is not None and tps > 0, tps
    p99 = prometheus.value(
        "histogram_quantile(0.99, sum by (le) (rate(kestrel_commit_block_seconds_bucket[1m])))")
    assert p99 is not None and 0 < p99 <= 30, p99
    print(f"prometheus: committed block {block0:.0f} -> {block:.0f}, "
          f"txs {txs0:.0f} -> {txs:.0f}, tps(1m) {tps:.2f}, commit p99 {p99 * 1000:.2f} ms")


def test_alert_rules_load_and_evaluate(node, prometheus):
    """Every rule of alerts.yml is loaded, evaluates without error against live data, and none
    fires on a healthy node; the stall rule stays inactive while blocks are coming."""
    deadline = time.monotonic() + RULES_TIMEOUT_S
    while True:
        groups = prometheus.api("rules")["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"] if r["type"] == "alerting"}
        evaluated = all(r.get("lastEvaluation", "").startswith("20") for r in rules.values())
        if set(rules) == EXPECTED_ALERTS and evaluated:
            break
        assert time.monotonic() < deadline, f"rules not all loaded and evaluated: {rules}"
        time.sleep(0.5)
    bad = {n: (r["health"], r.get("lastError")) for n, r in rules.items() if r["health"] != "ok"}
    assert not bad, f"rules with evaluation errors: {bad}"

    # Give the stall rule a full 30 s window of samples from a node that is advancing.
    prometheus.wait_for("count_over_time(kestrel_chain_committed_block[30s])", lambda v: v >= 3,
                        RULES_TIMEOUT_S, "too few samples for the stall rule")
    rules = {r["name"]: r for g in prometheus.api("rules")["groups"] for r in g["rules"]}
    assert rules["KestrelNodeStalled"]["state"] == "inactive", rules["KestrelNodeStalled"]
    assert rules["KestrelNodeDown"]["state"] == "inactive", rules["KestrelNodeDown"]
    firing = [a for a in prometheus.api("alerts")["alerts"] if a["state"] == "firing"]
    assert not firing, f"alerts firing on a healthy node: {firing}"
