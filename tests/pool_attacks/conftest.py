"""Fixtures for the pool and ordering attack tests (issue 19, findings 1 and 4): a real
`kestrel node --dev` (tests/e2e's KestrelNode) and a 4-validator loopback testnet (tests/testnet's
Testnet), each started fresh for the test that asks for it."""

from __future__ import annotations

import pytest

import kestrel_node
from testnet import Testnet

# The testnet tests' block time: finality within a second on loopback.
TESTNET_BLOCK_TIME_MS = 200

pytest_runtest_makereport = kestrel_node.log_tails_hook()


@pytest.fixture
def start_node(tmp_path):
    """Starts a fresh dev node with extra flags; every node is stopped at the end of the test."""
    yield from kestrel_node.node_starter(tmp_path)


@pytest.fixture
def testnet(tmp_path):
    t = Testnet(tmp_path / "testnet", 4, ["--block-time-ms", str(TESTNET_BLOCK_TIME_MS)])
    try:
        t.start_all()
        yield t
    finally:
        t.stop_all()
