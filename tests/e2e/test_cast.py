"""Foundry's `cast` (npm `@foundry-rs/cast`) against the dev node: deploy with `cast send
--create`, `cast send`, `cast call`, `cast receipt`, `cast logs`, `cast storage`, `cast balance`
and `cast block-number` all work and agree with what web3.py reads; `cast run` replays a
transaction on the state before its block (historical state) and uses the gas the receipt says."""

from __future__ import annotations


import json
import subprocess
from pathlib import Path

from eth_abi import encode as abi_encode
from eth_utils import keccak
from web3 import Web3

from e2e_util import own_node_fixtures
from kestrel_node import DEV_KEYS

CAST = Path(__file__).resolve().parent / "node_modules" / ".bin" / "cast"
TIMEOUT_S = 60


# The session's node is test_web3's, which expects the dev accounts untouched: these tests spend
# from them on a node of their own.
node, w3 = own_node_fixtures()


def cast(node, *args: str) -> str:
    # The URL right after the subcommand: `send --create CODE SIG ARGS...` takes the rest.
    out = subprocess.run([str(CAST), args[0], "--rpc-url", node.url, *args[1:]],
                         capture_output=True, text=True, timeout=TIMEOUT_S)
    assert out.returncode == 0, f"cast {' '.join(args)}: {out.stderr}"
    return out.stdout.strip()


def test_cast_against_the_dev_node(node, w3, token_artifact):
    key = DEV_KEYS[4]
    me = w3.eth.account.from_key(key).address
    deployed = json.loads(cast(node, "send", "--private-key", key, "--json", "--create",
                               token_artifact["bytecode"], "constructor(string,string,uint256)",
                               "Cast Token", "CST", "1000000"))
    assert deployed["status"] == "0x1", deployed
    token = Web3.to_checksum_address(deployed["contractAddress"])

    to = "0x" + "ab" * 20
    sent = json.loads(cast(node, "send", "--private-key", key, "--json", token,
                           "transfer(address,uint256)", to, "1234"))
    assert sent["status"] == "0x1", sent
    tx = sent["transactionHash"]

    assert cast(node, "call", token, "balanceOf(address)(uint256)", to).split()[0] == "1234"
    receipt = json.loads(cast(node, "receipt", "--json", tx))
    assert receipt["blockHash"] == w3.eth.get_transaction_receipt(tx)["blockHash"].to_0x_hex()
    logs = json.loads(cast(node, "logs", "--json", "--from-block", receipt["blockNumber"],
                           "--to-block", receipt["blockNumber"], "--address", token,
                           "Transfer(address indexed,address indexed,uint256)"))
    assert [log["transactionHash"] for log in logs] == [tx]

    # The token's balances live in mapping slot 3 (contracts/Token.sol, as test_web3 reads it).
    slot = "0x" + keccak(abi_encode(["address", "uint256"], [to, 3])).hex()
    assert int(cast(node, "storage", token, slot), 16) == 1234
    assert int(cast(node, "balance", me)) == w3.eth.get_balance(me)
    assert int(cast(node, "block-number")) >= int(receipt["blockNumber"], 16)

    # `cast run` forks the state before the transaction's block and replays the block up to it.
    replay = cast(node, "run", tx)
    assert "Transaction successfully executed" in replay, replay
    assert f"Gas used: {int(receipt['gasUsed'], 16)}" in replay, replay
    assert "Transfer" in replay or "0xa9059cbb" in replay or "transfer" in replay, replay
