"""docs/metrics.md documents every metric family the node exports."""

from __future__ import annotations

import re
import time

import promql
from metrics_util import REPO_ROOT, scrape

DOCS = REPO_ROOT / "docs" / "metrics.md"
# Series that exist only after a rare event, so a test node does not export them.
EVENT_ONLY = {"kestrel_mempool_evicted_total", "kestrel_rpc_subscribers_dropped_total"}
# Exported only by a validator of a multi-validator chain or a full node (tests/testnet checks
# those are documented); the node under test is a --dev node.
MULTI_VALIDATOR_ONLY = {
    "kestrel_net_peers_connected",
    "kestrel_net_full_nodes_connected",
    "kestrel_full_node_lag_seconds",
    "kestrel_full_node_results_checked_total",
    "kestrel_net_received_bytes_total",
    "kestrel_net_sent_bytes_total",
    "kestrel_net_outbound_queue_depth",
    "kestrel_net_outbound_dropped_total",
    "kestrel_net_handshake_failures_total",
    "kestrel_net_protocol_errors_total",
    "kestrel_net_replaced_connections_total",
    "kestrel_net_dial_failures_total",
    "kestrel_net_preauth_connections",
    "kestrel_net_preauth_rejected_total",
    "kestrel_sync_blocks_total",
    "kestrel_sync_active",
    "kestrel_consensus_early_timeouts_total",
    "kestrel_txforward_sent_total",
    "kestrel_txforward_received_total",
    "kestrel_consensus_round",
    "kestrel_consensus_height",
    "kestrel_consensus_proposals_total",
    "kestrel_consensus_votes_total",
    "kestrel_consensus_qcs_created_total",
    "kestrel_consensus_tcs_created_total",
    "kestrel_consensus_timeouts_total",
    "kestrel_consensus_leader_failures_total",
    "kestrel_consensus_commit_latency_seconds",
    "kestrel_consensus_invalid_messages_total",
    "kestrel_consensus_execution_result_mismatch_total",
    "kestrel_consensus_halted",
    "kestrel_consensus_payloads_rejected_total",
    "kestrel_consensus_bad_timestamps_total",
    "kestrel_mempool_returned_total",
}
PRESENT_TIMEOUT_S = 30.0


def documented() -> set[str]:
    """Metric names in the first column of the docs' tables."""
    return set(re.findall(r"^\|\s*`(kestrel_[a-z0-9_]+)`\s*\|", DOCS.read_text(), re.M))


def test_every_exported_metric_is_documented(node, traffic):
    docs = documented()
    assert len(docs) >= 30, sorted(docs)
    deadline = time.monotonic() + PRESENT_TIMEOUT_S
    while True:  # some families appear a few blocks after start-up
        _, types = promql.parse_exposition(scrape(node))
        missing_in_node = docs - set(types) - EVENT_ONLY - MULTI_VALIDATOR_ONLY
        if not missing_in_node or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    undocumented = set(types) - docs
    assert not undocumented, f"exported but not in docs/metrics.md: {sorted(undocumented)}"
    assert not missing_in_node, f"documented but not exported: {sorted(missing_in_node)}"
