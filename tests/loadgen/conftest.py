"""Fixtures for the kestrel-loadgen tests: real `kestrel node --dev` processes (tests/e2e's
KestrelNode) and the real load generator binary.

The load generator is $KESTREL_LOADGEN_BIN, or kestrel-loadgen next to the kestrel binary
($KESTREL_BIN or target/release/kestrel): `cargo build --release --bin kestrel --bin kestrel-loadgen`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import kestrel_node
from kestrel_node import kestrel_bin

LOADGEN_TIMEOUT_S = 180.0

# A failing test gets the tail of every node's log.
pytest_runtest_makereport = kestrel_node.log_tails_hook()


def loadgen_bin() -> Path:
    path = os.environ.get("KESTREL_LOADGEN_BIN")
    return Path(path) if path else kestrel_bin().parent / "kestrel-loadgen"


def run_loadgen(*args: str) -> subprocess.CompletedProcess:
    binary = loadgen_bin()
    assert binary.exists(), f"{binary} not found: cargo build --release --bin kestrel-loadgen"
    return subprocess.run(
        [str(binary), "--quiet", *args],
        capture_output=True, text=True, timeout=LOADGEN_TIMEOUT_S,
    )


@pytest.fixture
def start_node(tmp_path):
    """Starts a fresh dev node with extra flags; every node is stopped at the end of the test."""
    yield from kestrel_node.node_starter(tmp_path)
