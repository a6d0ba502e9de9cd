"""pytest fixtures for Kestrel's end-to-end tests.

`node` starts one `kestrel node --dev` for the session on free ports with a temporary datadir
and always stops it at the end. A failing test gets the tail of every node's log attached to
its report.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

import kestrel_node
from e2e_util import send_signed, wait_receipt
from kestrel_node import DEV_KEYS, KestrelNode

HERE = Path(__file__).resolve().parent
COMPILE_TIMEOUT_S = 120


pytest_runtest_makereport = kestrel_node.log_tails_hook()


def run_node(tmp_path_factory):
    """Starts a dev node for a fixture to yield, and stops it afterwards."""
    base = tmp_path_factory.mktemp("kestrel")
    n = KestrelNode(datadir=base / "data", log_dir=base)
    try:
        n.start()
        yield n
    finally:
        code = n.stop()
        print(f"\nkestrel node stopped (exit code {code}); log: {n.log_path}")


def connect(node) -> Web3:
    w = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 10}))
    assert w.is_connected()
    return w


@pytest.fixture(scope="session")
def node(tmp_path_factory):
    yield from run_node(tmp_path_factory)


@pytest.fixture(scope="session")
def w3(node) -> Web3:
    return connect(node)


@pytest.fixture(scope="module")
def own_node(tmp_path_factory):
    """A dev node of the module's own: its tests spend from dev accounts that test_web3 expects
    untouched on the session's node."""
    yield from run_node(tmp_path_factory)


@pytest.fixture(scope="module")
def own_w3(own_node) -> Web3:
    return connect(own_node)


@pytest.fixture(scope="session")
def dev_accounts():
    return [Account.from_key(k) for k in DEV_KEYS]


@pytest.fixture(scope="session")
def token_artifact(tmp_path_factory):
    """ABI and bytecode of contracts/Token.sol, compiled by compile.mjs (npm solc, offline)."""
    node_js = shutil.which("node")
    assert node_js, "node (Node.js) is needed to compile Token.sol with solc-js"
    assert (HERE / "node_modules" / "solc").exists(), "run `npm ci` in tests/e2e first"
    out = tmp_path_factory.mktemp("solc") / "Token.json"
    subprocess.run(
        [node_js, str(HERE / "compile.mjs"), "--out", str(out)],
        check=True, cwd=HERE, timeout=COMPILE_TIMEOUT_S,
    )
    return json.loads(out.read_text())


@pytest.fixture
def funded_account(w3, dev_accounts):
    """A fresh random account holding 100 ETH, funded by dev account 9 (no other test uses it
    as a sender, so parallel funding is serialised by the pending nonce)."""

    def make(amount_wei: int = 100 * 10**18):
        acct = Account.create()
        h = send_signed(w3, dev_accounts[9], {"to": acct.address, "value": amount_wei})
        r = wait_receipt(w3, h)
        assert r["status"] == 1
        assert w3.eth.get_balance(acct.address) == amount_wei
        return acct

    return make
