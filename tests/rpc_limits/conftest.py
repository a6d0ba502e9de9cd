"""Fixtures for the JSON-RPC limit tests (issue 19, findings 2, 3 and 6): each test starts a real
`kestrel node --dev` (tests/e2e's KestrelNode: free ports, temporary datadir) with the limits it
exercises, attacks it over loopback and checks what a healthy client still gets.

Run with the e2e venv: tests/e2e/.venv/bin/python -m pytest -q tests/rpc_limits
"""

from __future__ import annotations

import resource

import pytest

import kestrel_node

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
    """Starts a fresh dev node with extra flags; every node is stopped at the end of the test."""
    yield from kestrel_node.node_starter(tmp_path)
