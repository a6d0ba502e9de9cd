"""Helpers of the RPC limit tests: clients from chosen loopback addresses, the node's RSS and
metrics. Linux routes all of 127.0.0.0/8 to loopback, so an attacker and a healthy client on one
machine can still be two IP addresses, as the per-IP limits see them."""

from __future__ import annotations

import http.client
import json
import re
import time
from pathlib import Path

import requests

from kestrel_node import KestrelNode

HEALTHY_IP = "127.0.0.1"
ATTACKER_IP = "127.0.0.2"
HTTP_TIMEOUT_S = 30.0


def rss_bytes(node: KestrelNode) -> int:
    """The node process's resident memory."""
    status = Path(f"/proc/{node.proc.pid}/status").read_text()
    kib = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert kib, status
    return int(kib.group(1)) * 1024


def metric(node: KestrelNode, name: str, **labels: str) -> float:
    """The sum of the series of `name` whose labels include `labels`."""
    total = 0.0
    for line in requests.get(node.metrics_url, timeout=5).text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        if series != name and not series.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def post(node: KestrelNode, body, source: str = HEALTHY_IP, timeout: float = HTTP_TIMEOUT_S):
    """POSTs `body` (JSON-encoded) from `source`; returns (HTTP status, parsed body)."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", node.http_port, timeout=timeout, source_address=(source, 0)
    )
    try:
        conn.request("POST", "/", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def call(method: str, params: list, id_: int = 1) -> dict:
    return {"jsonrpc": "2.0", "id": id_, "method": method, "params": params}


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def timed_calls(node: KestrelNode, method: str, params: list, count: int, pause_s: float = 0.01):
    """`count` calls over one keep-alive connection from the healthy address; returns each one's
    latency in seconds. Every call must succeed."""
    session = requests.Session()
    latencies = []
    for i in range(count):
        started = time.monotonic()
        out = session.post(node.url, json=call(method, params, i), timeout=HTTP_TIMEOUT_S).json()
        latencies.append(time.monotonic() - started)
        assert "result" in out, out
        time.sleep(pause_s)
    session.close()
    return latencies
