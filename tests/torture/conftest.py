"""pytest hooks for the torture tests: tests/testnet and tests/e2e on the import path (the
harness: real `kestrel` processes), and a failing test gets the tail of every node's log."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "testnet"))

import testnet  # noqa: E402,F401  (puts tests/e2e on sys.path)
import kestrel_node  # noqa: E402

pytest_runtest_makereport = kestrel_node.log_tails_hook("node log")
