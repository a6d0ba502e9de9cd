"""The Grafana dashboard: valid JSON with a sane layout; every metric its PromQL uses is exported
by a running node; every query is valid PromQL and returns data from a real Prometheus."""

from __future__ import annotations

import json
import re
import time

import promql
from metrics_util import DASHBOARD_JSON, REPO_ROOT, scrape

QUERY_DATA_TIMEOUT_S = 60.0
METRICS_PRESENT_TIMEOUT_S = 30.0
# What Grafana substitutes for the dashboard's variables, for querying Prometheus directly.
VARIABLES = {"$__rate_interval": "30s", "$instance": ".*"}


def load_dashboard() -> dict:
    return json.loads(DASHBOARD_JSON.read_text())


def panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # panels inside collapsed rows
    return out


def exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query target."""
    return [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]


def template_queries(dashboard: dict) -> list[str]:
    out = []
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]
            out.append(q["query"] if isinstance(q, dict) else q)
    return out


def substitute(expr: str) -> str:
    for var, value in VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def test_dashboard_json_is_valid():
    d = load_dashboard()
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    all_panels = panels(d)
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    variables = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    cells: dict[tuple[int, int], str] = {}
    for p in all_panels:
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p.get("targets"), f"panel {p['title']!r} has no queries"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]
            # Every query follows the instance variable.
            assert 'instance=~"$instance"' in t["expr"], (p["title"], t["expr"])


def test_provisioning_files():
    prov = REPO_ROOT / "deploy" / "grafana" / "provisioning"
    ds = (prov / "datasources" / "prometheus.yml").read_text()
    assert re.search(r"^apiVersion: 1$", ds, re.M) and "type: prometheus" in ds
    dash = (prov / "dashboards" / "kestrel.yml").read_text()
    assert re.search(r"^apiVersion: 1$", dash, re.M) and "type: file" in dash
    assert "path: /var/lib/grafana/dashboards/kestrel" in dash


def test_dashboard_metrics_exist_in_node(node, traffic):
    """Every metric name in the dashboard's PromQL is a sample name in the node's /metrics:
    after traffic, so labelled and event-driven series exist. Histograms count only with their
    _bucket/_sum/_count suffix: Prometheus has no series under the bare name."""
    d = load_dashboard()
    used: dict[str, list[str]] = {}
    for title, expr in exprs(d):
        for name in promql.metric_names(expr):
            used.setdefault(name, []).append(title)
    for q in template_queries(d):
        for name in promql.template_query_metric_names(q):
            used.setdefault(name, []).append("(template variable)")
    assert len(used) >= 20, f"suspiciously few metric names found: {sorted(used)}"

    # Some series need a few blocks after start-up (e.g. the delayed execution results, which
    # trail the head by a few blocks): poll, bounded.
    deadline = time.monotonic() + METRICS_PRESENT_TIMEOUT_S
    while True:
        samples, types = promql.parse_exposition(scrape(node))
        missing = {name: titles for name, titles in used.items() if name not in samples}
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    hints = {
        name: f"{types[name]} family; use {name}_bucket/_sum/_count" if name in types else "absent"
        for name in missing
    }
    assert not missing, f"metrics used by the dashboard but not exported: {missing} ({hints})"


def test_dashboard_queries_return_data(node, traffic, prometheus):
    """Every query, with the variables filled in, is valid PromQL for the real Prometheus and
    (once a few scrapes after the traffic are in) returns at least one series."""
    prometheus.wait_for('up{job="kestrel"}', lambda v: v == 1, QUERY_DATA_TIMEOUT_S,
                        "Prometheus did not scrape the node")
    queries = [(title, substitute(e)) for title, e in exprs(load_dashboard())]
    # Valid PromQL: Prometheus answers with success (PromQueryError otherwise).
    for title, q in queries:
        prometheus.query(q)
    deadline = time.monotonic() + QUERY_DATA_TIMEOUT_S
    while True:
        empty = [(title, q) for title, q in queries if not prometheus.query(q)]
        if not empty:
            break
        assert time.monotonic() < deadline, f"queries still without data: {empty}"
        time.sleep(1.0)
    for q in template_queries(load_dashboard()):
        m = re.match(r"label_values\((.+),\s*instance\)", q)
        assert m, q
        values = prometheus.api("label/instance/values", {"match[]": m.group(1)})
        assert f"127.0.0.1:{node.metrics_port}" in values, (q, values)
