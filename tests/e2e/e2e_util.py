"""Small helpers shared by the web3.py end-to-end tests. Every wait is bounded."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import requests
from eth_utils import keccak
from web3 import Web3

from kestrel_node import CHAIN_ID, RPC_TIMEOUT_S, free_port

RECEIPT_TIMEOUT_S = 30.0
BLOCKS_TIMEOUT_S = 20.0


def wait_receipt(w3: Web3, tx_hash, timeout: float = RECEIPT_TIMEOUT_S):
    return w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout, poll_latency=0.1)


def wait_blocks(w3: Web3, count: int, timeout: float = BLOCKS_TIMEOUT_S) -> int:
    """Wait until `count` more blocks are committed; returns the new head number."""
    start = w3.eth.block_number
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        head = w3.eth.block_number
        if head >= start + count:
            return head
        time.sleep(0.1)
    raise TimeoutError(f"head did not advance {count} blocks from {start} within {timeout}s")


def fees(w3: Web3, tip_wei: int = 1_000_000_000) -> dict:
    """EIP-1559 fee fields comfortably above the current base fee."""
    base = w3.eth.get_block("latest")["baseFeePerGas"]
    return {"maxFeePerGas": 2 * base + tip_wei, "maxPriorityFeePerGas": tip_wei}


def sign(w3: Web3, account, tx: dict) -> bytes:
    """Fill chainId/nonce/gas/fee defaults and sign locally; returns the raw transaction."""
    tx = dict(tx)
    tx.setdefault("chainId", CHAIN_ID)
    if "nonce" not in tx:
        tx["nonce"] = w3.eth.get_transaction_count(account.address, "pending")
    tx.setdefault("gas", 21_000)
    if "gasPrice" not in tx and "maxFeePerGas" not in tx:
        tx.update(fees(w3))
    return bytes(account.sign_transaction(tx).raw_transaction)


def send_signed(w3: Web3, account, tx: dict):
    """sign() then eth_sendRawTransaction; returns the tx hash."""
    return w3.eth.send_raw_transaction(sign(w3, account, tx))


def tx_hash_of(raw: bytes) -> str:
    return "0x" + keccak(raw).hex()


def raw_rpc(url: str, method: str, params: list | None = None) -> dict:
    """One JSON-RPC request over plain HTTP; the whole response (result or error), unprocessed."""
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}
    return requests.post(url, json=body, timeout=RPC_TIMEOUT_S).json()


def account_state(w3: Web3, address: str) -> dict:
    """What a rejected transaction must not change."""
    return {
        "balance": w3.eth.get_balance(address, "latest"),
        "nonce": w3.eth.get_transaction_count(address, "latest"),
    }


def own_node_fixtures():
    """`node` and `w3` fixtures for a module that must not share the session's node: they take
    conftest's module-scoped `own_node` and `own_w3` (`node, w3 = own_node_fixtures()`)."""

    @pytest.fixture(scope="module", name="node")
    def node_fixture(own_node):
        return own_node

    @pytest.fixture(scope="module", name="w3")
    def w3_fixture(own_w3):
        return own_w3

    return node_fixture, w3_fixture


def deploy_token(w3: Web3, deployer, artifact: dict, name: str, symbol: str, supply: int):
    """Deploys contracts/Token.sol from `deployer` and waits for it; returns the contract."""
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    tx = factory.constructor(name, symbol, supply).build_transaction({
        "from": deployer.address, "nonce": w3.eth.get_transaction_count(deployer.address),
        "chainId": CHAIN_ID, **fees(w3)})
    receipt = wait_receipt(w3, w3.eth.send_raw_transaction(deployer.sign_transaction(tx).raw_transaction))
    assert receipt["status"] == 1, receipt
    return w3.eth.contract(address=receipt["contractAddress"], abi=artifact["abi"])


ANVIL = Path(__file__).resolve().parent / "node_modules" / ".bin" / "anvil"
ANVIL_START_TIMEOUT_S = 30.0


def run_anvil(tmp_path: Path, *flags: str):
    """For a pytest fixture (`yield from run_anvil(tmp_path, ...)`): anvil (npm
    `@foundry-rs/anvil`) on a free port with Kestrel's dev chain id and fork, as the reference
    node of side-by-side tests; yields a web3 connection to it and stops it afterwards."""
    port = free_port()
    log = open(tmp_path / "anvil.log", "w")
    proc = subprocess.Popen(
        [str(ANVIL), "--port", str(port), "--chain-id", str(CHAIN_ID), "--hardfork", "prague",
         *flags], stdout=log, stderr=subprocess.STDOUT)
    w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}"))
    deadline = time.monotonic() + ANVIL_START_TIMEOUT_S
    while not w3.is_connected():
        assert proc.poll() is None and time.monotonic() < deadline, "anvil did not start"
        time.sleep(0.1)
    yield w3
    proc.terminate()
    proc.wait(timeout=10)
    log.close()
