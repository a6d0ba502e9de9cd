"""Fixtures for the kestrel-loadgen tests: real `kestrel node --dev` processes (tests/e2e's
KestrelNode) and the real load generator binary.

The load generator is $KESTREL_LOADGEN_BIN, or kestrel-loadgen next to the kestrel binary
($KESTREL_BIN or target/release/kestrel): `cargo build --release --bin kestrel --bin kestrel-loadgen`.
"""

from __future__ import annotations

import subprocess

import pytest

import kestrel_node

LOADGEN_TIMEOUT_S = 180.0

# A failing test gets the tail of every node's log.
pytest_runtest_makereport = kestrel_node.log_tails_hook()


def run_loadgen(*args: str) -> subprocess.CompletedProcess:
    return kestrel_node.run_loadgen(*args, timeout=LOADGEN_TIMEOUT_S)


@pytest.fixture
def start_node(tmp_path):
    """Starts a fresh dev node with extra flags; every node is stopped at the end of the test."""
    yield from kestrel_node.node_starter(tmp_path)
