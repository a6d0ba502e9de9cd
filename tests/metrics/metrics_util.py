"""Helpers shared by the metrics tests. Importing this puts tests/e2e on sys.path, so the
end-to-end helpers (kestrel_node, e2e_util) can be imported next."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
E2E_DIR = REPO_ROOT / "tests" / "e2e"
if str(E2E_DIR) not in sys.path:
    sys.path.insert(0, str(E2E_DIR))

import requests  # noqa: E402
from e2e_util import fees, sign, wait_receipt  # noqa: E402
from kestrel_node import DEV_ADDRESSES  # noqa: E402
from web3 import Web3  # noqa: E402

DASHBOARD_JSON = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "kestrel.json"
PROMETHEUS_YML = REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS_YML = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST_YML = HERE / "alerts_test.yml"
METRICS_TIMEOUT_S = 5.0


def scrape(node) -> str:
    """The node's /metrics text."""
    r = requests.get(node.metrics_url, timeout=METRICS_TIMEOUT_S)
    r.raise_for_status()
    return r.text


def send_transfers(w3: Web3, account, count: int) -> list:
    """`count` signed transfers from `account` with consecutive nonces; waits for every receipt."""
    nonce = w3.eth.get_transaction_count(account.address, "pending")
    tx_fees = fees(w3)
    hashes = [
        w3.eth.send_raw_transaction(
            sign(w3, account, {"to": DEV_ADDRESSES[8], "value": 1, "nonce": nonce + i, **tx_fees})
        )
        for i in range(count)
    ]
    receipts = [wait_receipt(w3, h) for h in hashes]
    assert all(r["status"] == 1 for r in receipts), receipts
    return receipts


def send_one_block(node, w3: Web3, accounts: list, per_account: int) -> list:
    """Transfers from each of `accounts` (`per_account` each, consecutive nonces), signed first and
    sent as one JSON-RPC batch so that they are likely to land in one block; waits for every
    receipt."""
    tx_fees = fees(w3)
    raws = []
    for account in accounts:
        nonce = w3.eth.get_transaction_count(account.address, "pending")
        raws += [sign(w3, account, {"to": DEV_ADDRESSES[8], "value": 1, "nonce": nonce + i,
                                    **tx_fees}) for i in range(per_account)]
    batch = [{"jsonrpc": "2.0", "id": i, "method": "eth_sendRawTransaction",
              "params": ["0x" + raw.hex()]} for i, raw in enumerate(raws)]
    answers = requests.post(node.url, json=batch, timeout=30).json()
    assert all("result" in a for a in answers), answers
    receipts = [wait_receipt(w3, a["result"]) for a in answers]
    assert all(r["status"] == 1 for r in receipts), receipts
    return receipts
