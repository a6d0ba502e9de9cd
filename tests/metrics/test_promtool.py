"""promtool: the node's /metrics passes the exposition lint, and the deploy/prometheus files pass
`check config`, `check rules` and the rule unit tests in alerts_test.yml."""

from __future__ import annotations

import re
import subprocess

from metrics_util import ALERTS_TEST_YML, ALERTS_YML, PROMETHEUS_YML, REPO_ROOT, scrape
from prometheus_server import promtool_bin

PROMTOOL_TIMEOUT_S = 60


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool_bin(), *args], input=stdin, capture_output=True, text=True,
        cwd=REPO_ROOT, timeout=PROMTOOL_TIMEOUT_S,
    )


def show(p: subprocess.CompletedProcess) -> str:
    return f"exit code {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"


def test_node_metrics_pass_promtool_lint(node, traffic):
    """After traffic, so that the labelled and event-driven series are in the output too."""
    text = scrape(node)
    assert "kestrel_rpc_errors_total{" in text and "kestrel_mempool_rejected_total{" in text
    p = promtool("check", "metrics", stdin=text)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), show(p)


def test_deploy_prometheus_config_is_valid():
    p = promtool("check", "config", str(PROMETHEUS_YML))
    assert p.returncode == 0, show(p)
    assert "SUCCESS: 1 rule files found" in p.stdout, show(p)


def test_deploy_prometheus_config_scrapes_the_node():
    """What `check config` does not check: the job, the target, the interval and the rules."""
    text = PROMETHEUS_YML.read_text()
    assert re.search(r"^\s*-\s*job_name:\s*kestrel\s*$", text, re.M), text
    assert re.search(r"targets:\s*\[\s*[\"']127\.0\.0\.1:9100[\"']\s*\]", text), text
    assert re.search(r"^\s*scrape_interval:\s*5s\s*$", text, re.M), text
    assert re.search(r"^\s*-\s*alerts\.yml\s*$", text, re.M), text


def test_alert_rules_are_valid():
    p = promtool("check", "rules", str(ALERTS_YML))
    assert p.returncode == 0, show(p)
    assert "SUCCESS: 7 rules found" in p.stdout, show(p)


def test_alert_rules_unit_tests():
    p = promtool("test", "rules", str(ALERTS_TEST_YML))
    assert p.returncode == 0 and "SUCCESS" in p.stdout, show(p)
