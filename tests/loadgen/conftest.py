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
from kestrel_node import KestrelNode, kestrel_bin

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
    """Starts a fresh node with extra flags; every node is stopped at the end of the test."""
    nodes: list[KestrelNode] = []

    def start(*extra_args: str) -> KestrelNode:
        base = tmp_path / f"node{len(nodes)}"
        n = KestrelNode(datadir=base / "data", log_dir=base, extra_args=list(extra_args))
        nodes.append(n)
        n.start()
        return n

    yield start
    for n in nodes:
        n.stop()
