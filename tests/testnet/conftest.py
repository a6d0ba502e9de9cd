"""pytest hooks for the testnet tests: a failing test gets the tail of every validator's log."""

from __future__ import annotations

import testnet  # noqa: F401  (puts tests/e2e on sys.path)
import kestrel_node

pytest_runtest_makereport = kestrel_node.log_tails_hook("validator log")
