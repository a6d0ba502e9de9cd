"""docs/metrics.md documents every metric family the node exports."""

from __future__ import annotations

import re
import time

import promql
from metrics_util import REPO_ROOT, scrape

DOCS = REPO_ROOT / "docs" / "metrics.md"
# Series that exist only after a rare event, so a test node does not export them.
EVENT_ONLY = {"kestrel_mempool_evicted_total", "kestrel_consensus_delayed_result_mismatch_total"}
# Recorded only by the parallel executor; the node under test runs the default sequential one.
PARALLEL_ONLY = {
    "kestrel_execution_parallel_phase_seconds",
    "kestrel_execution_reexecutions_total",
    "kestrel_execution_relaxed_merges_total",
    "kestrel_execution_sequential_fallback_total",
    "kestrel_execution_validation_failures_total",
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
        missing_in_node = docs - set(types) - EVENT_ONLY - PARALLEL_ONLY
        if not missing_in_node or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    undocumented = set(types) - docs
    assert not undocumented, f"exported but not in docs/metrics.md: {sorted(undocumented)}"
    assert not missing_in_node, f"documented but not exported: {sorted(missing_in_node)}"
