"""pytest fixtures for the metrics tests: one `kestrel node --dev` and one real Prometheus server
scraping it, both for the whole session and always stopped at the end.

The node helper and the transaction helpers are the end-to-end tests' (tests/e2e), imported
from there. A failing test gets the tail of the node's and Prometheus' logs attached.

Run with the e2e venv: tests/e2e/.venv/bin/python -m pytest -q tests/metrics
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

import metrics_util  # noqa: F401  (puts tests/e2e on sys.path first)
import kestrel_node
from e2e_util import fees, raw_rpc, sign
from eth_account import Account
from kestrel_node import DEV_ADDRESSES, DEV_KEYS, KestrelNode
from metrics_util import send_one_block, send_transfers
from prometheus_server import PrometheusServer
from web3 import Web3

SERVERS: list[PrometheusServer] = []
# The parallel executor runs blocks of at least this many transactions in parallel
# (`PARALLEL_MIN_TXS` in pipeline/src/parallel/mod.rs).
PARALLEL_MIN_TXS = 64
PARALLEL_BLOCK_TXS = 96
PARALLEL_BLOCK_ATTEMPTS = 3


pytest_runtest_makereport = kestrel_node.log_tails_hook(
    extra_logs=lambda: [(f"prometheus log ({p.workdir})", p.log_tail()) for p in SERVERS]
)


@pytest.fixture(scope="session")
def node(tmp_path_factory):
    base = tmp_path_factory.mktemp("kestrel")
    n = KestrelNode(datadir=base / "data", log_dir=base)
    try:
        n.start()
        yield n
    finally:
        code = n.stop()
        print(f"\nkestrel node stopped (exit code {code}); log: {n.log_path}")


@pytest.fixture(scope="session")
def prometheus(node, tmp_path_factory):
    server = PrometheusServer(f"127.0.0.1:{node.metrics_port}", tmp_path_factory.mktemp("prometheus"))
    SERVERS.append(server)
    try:
        server.start()
        yield server
    finally:
        code = server.stop()
        print(f"\nprometheus stopped (exit code {code}); log: {server.log_path}")


@pytest.fixture(scope="session")
def w3(node) -> Web3:
    w = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 10}))
    assert w.is_connected()
    return w


@dataclass
class Traffic:
    included_txs: int


@pytest.fixture(scope="session")
def traffic(node, w3) -> Traffic:
    """Traffic that creates every labelled or event-driven series the dashboard uses: included
    transactions, a block the parallel executor runs in parallel, a refused one (nonce too low), a queued one and its replacement, RPC calls of
    several methods, an RPC error and an unknown method."""
    sender = Account.from_key(DEV_KEYS[1])
    send_transfers(w3, sender, 3)
    included = 3

    # A block large enough for the parallel executor (the node's default) to run it in
    # parallel, not fall back to sequential: its own metrics are exported from then on.
    parallel = [Account.from_key(k) for k in DEV_KEYS[3:7]]
    for _ in range(PARALLEL_BLOCK_ATTEMPTS):
        receipts = send_one_block(node, w3, parallel, PARALLEL_BLOCK_TXS // len(parallel))
        included += len(receipts)
        per_block = Counter(r["blockNumber"] for r in receipts)
        if max(per_block.values()) >= PARALLEL_MIN_TXS:
            break
    else:
        pytest.fail(f"no block of {PARALLEL_MIN_TXS}+ transactions: {per_block}")

    # Refused at admission: nonce 0 is long used.
    tx_fees = fees(w3)
    stale = sign(w3, sender, {"to": DEV_ADDRESSES[8], "value": 1, "nonce": 0, **tx_fees})
    out = raw_rpc(node.url, "eth_sendRawTransaction", ["0x" + stale.hex()])
    assert "error" in out and "nonce" in out["error"]["message"], out

    # A queued transaction (nonce gap, never executable), then its replacement at a 2x fee.
    gapped = Account.from_key(DEV_KEYS[2])
    nonce = w3.eth.get_transaction_count(gapped.address, "pending") + 5
    for bump in (1, 2):
        raw = sign(w3, gapped, {
            "to": DEV_ADDRESSES[8], "value": 1, "nonce": nonce,
            "maxFeePerGas": tx_fees["maxFeePerGas"] * bump,
            "maxPriorityFeePerGas": tx_fees["maxPriorityFeePerGas"] * bump,
        })
        out = raw_rpc(node.url, "eth_sendRawTransaction", ["0x" + raw.hex()])
        assert "result" in out, out

    # Read calls, an invalid-params error and an unknown method.
    for method, params in [
        ("eth_blockNumber", []),
        ("eth_getBalance", [DEV_ADDRESSES[8], "latest"]),
        ("eth_call", [{"to": DEV_ADDRESSES[8], "data": "0x"}, "latest"]),
    ]:
        out = raw_rpc(node.url, method, params)
        assert "result" in out, (method, out)
    out = raw_rpc(node.url, "eth_getBalance", ["0xnot-an-address", "latest"])
    assert out["error"]["code"] == -32602, out
    out = raw_rpc(node.url, "kestrel_noSuchMethod", [])
    assert out["error"]["code"] == -32601, out
    return Traffic(included_txs=included)
