"""Fixtures for the JSON-RPC limit tests (issue 19, findings 2, 3 and 6): each test starts a real
`kestrel node --dev` (tests/e2e's KestrelNode: free ports, temporary datadir) with the limits it
exercises, attacks it over loopback and checks what a healthy client still gets.

Run with the e2e venv: tests/e2e/.venv/bin/python -m pytest -q tests/rpc_limits
"""

from __future__ import annotations

import resource

import pytest

import kestrel_node
from kestrel_node import KestrelNode

# Sockets the attacks open at once, with room for the node's and pytest's own.
FDS_NEEDED = 4096

pytest_runtest_makereport = kestrel_node.log_tails_hook()


@pytest.fixture(scope="session", autouse=True)
def enough_file_descriptors():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = FDS_NEEDED if hard == resource.RLIM_INFINITY else min(FDS_NEEDED, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 1100 or soft == resource.RLIM_INFINITY, (
        "the slowloris test needs over 1,000 file descriptors"
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
