"""pytest hooks for the torture tests: tests/testnet and tests/e2e on the import path (the
harness: real `kestrel` processes), the seed printed first, and a failing test gets the tail of
every node's log."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "testnet"))

import testnet  # noqa: E402,F401  (puts tests/e2e on sys.path)
import kestrel_node  # noqa: E402

pytest_runtest_makereport = kestrel_node.log_tails_hook("node log")


# The seed of the run, chosen here when not given, so that the tests' modules read the one printed.
os.environ.setdefault("KESTREL_TORTURE_SEED", str(random.SystemRandom().randrange(2**32)))


def pytest_sessionstart(session):
    """The seed heads the run's output, also with -q (every failure message ends with it too)."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"torture: KESTREL_TORTURE_SEED={os.environ['KESTREL_TORTURE_SEED']}")
