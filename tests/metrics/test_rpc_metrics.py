"""The RPC middleware counts every call under its method, each call of a batch too, and times
it; unknown methods count under `unknown`, errors under their method and code."""

from __future__ import annotations

import re

import requests
from e2e_util import raw_rpc
from metrics_util import scrape

CALLS = 5
BATCH = 7
RPC_TIMEOUT_S = 10.0


def series(text: str, name: str, **labels: str) -> float:
    """The value of the series `name` with exactly these labels, 0 if absent."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.compile(rf"^{re.escape(name)}\{{{re.escape(want)}\}} (\S+)$", re.M)
    m = pattern.search(text)
    return float(m.group(1)) if m else 0.0


def test_rpc_calls_are_counted_and_timed_per_method(node):
    before = scrape(node)
    for _ in range(CALLS):
        assert "result" in raw_rpc(node.url, "eth_chainId", [])
    batch = [
        {"jsonrpc": "2.0", "id": i, "method": "eth_chainId", "params": []} for i in range(BATCH)
    ]
    answers = requests.post(node.url, json=batch, timeout=RPC_TIMEOUT_S).json()
    assert len(answers) == BATCH and all("result" in a for a in answers), answers
    assert raw_rpc(node.url, "kestrel_notAMethod", [])["error"]["code"] == -32601
    assert raw_rpc(node.url, "eth_getBalance", ["0x12", "latest"])["error"]["code"] == -32602
    after = scrape(node)

    def delta(name: str, **labels: str) -> float:
        return series(after, name, **labels) - series(before, name, **labels)

    calls = CALLS + BATCH
    assert delta("kestrel_rpc_requests_total", method="eth_chainId") == calls
    assert delta("kestrel_rpc_request_duration_seconds_count", method="eth_chainId") == calls
    assert delta("kestrel_rpc_requests_total", method="unknown") == 1
    assert delta("kestrel_rpc_errors_total", method="unknown", code="-32601") == 1
    assert delta("kestrel_rpc_requests_total", method="eth_getBalance") == 1
    assert delta("kestrel_rpc_errors_total", method="eth_getBalance", code="-32602") == 1
