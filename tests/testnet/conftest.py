"""pytest hooks for the testnet tests: a failing test gets the tail of every validator's log."""

from __future__ import annotations

import pytest

import testnet  # noqa: F401  (puts tests/e2e on sys.path)
import kestrel_node


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for n in kestrel_node.NODES:
            report.sections.append((f"validator log ({n.datadir})", n.log_tail()))
