"""Historical state through web3.py: balances, nonces, storage, code and `eth_call` at past
blocks, by number and by hash, equal what each block left; a block before the history window
(`--history-blocks`) answers geth's -32000 with the oldest block that still has state."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_utils import keccak
from web3 import Web3
from web3.exceptions import Web3RPCError

from e2e_util import deploy_token, fees, own_node_fixtures, send_signed, wait_blocks, wait_receipt
from kestrel_node import CHAIN_ID, kestrel_bin, node_starter

# contracts/Token.sol: balances live in mapping slot 3.
BALANCE_OF_SLOT = 3
ROUNDS = 5
VALUE_WEI = 10**15
TOKENS = 7

node, w3 = own_node_fixtures()


@pytest.fixture
def start_node(tmp_path):
    yield from node_starter(tmp_path)


def test_state_at_past_blocks_is_what_each_block_left(w3, dev_accounts, token_artifact):
    sender = dev_accounts[6]
    token = deploy_token(w3, sender, token_artifact, "History", "HIS", 10**6)
    deployed_at = w3.eth.block_number
    recipient = Account.create().address
    slot = keccak(abi_encode(["address", "uint256"], [recipient, BALANCE_OF_SLOT]))

    # Each round: an ETH transfer and a token transfer to a fresh address, in one block or two.
    included = []
    for _ in range(ROUNDS):
        nonce = w3.eth.get_transaction_count(sender.address, "pending")
        eth = send_signed(w3, sender, {"to": recipient, "value": VALUE_WEI, "gas": 21_000,
                                       "nonce": nonce, "chainId": CHAIN_ID, **fees(w3)})
        tok = token.functions.transfer(recipient, TOKENS).build_transaction({
            "from": sender.address, "nonce": nonce + 1, "chainId": CHAIN_ID, **fees(w3)})
        tok = w3.eth.send_raw_transaction(sender.sign_transaction(tok).raw_transaction)
        included.append(wait_receipt(w3, eth)["blockNumber"])
        included.append(wait_receipt(w3, tok)["blockNumber"])
        wait_blocks(w3, 1)
    nonce_before = w3.eth.get_transaction_count(sender.address, deployed_at)
    head = w3.eth.block_number

    checked = 0
    for block in range(deployed_at, head + 1):
        eth_count = sum(1 for b in included[0::2] if b <= block)
        tok_count = sum(1 for b in included[1::2] if b <= block)
        want_nonce = nonce_before + eth_count + tok_count
        block_hash = w3.eth.get_block(block)["hash"]
        for at in (block, block_hash):
            assert w3.eth.get_balance(recipient, at) == eth_count * VALUE_WEI, (block, at)
            assert w3.eth.get_transaction_count(sender.address, at) == want_nonce, (block, at)
            assert token.functions.balanceOf(recipient).call(block_identifier=at) == tok_count * TOKENS
            stored = int.from_bytes(w3.eth.get_storage_at(token.address, slot, at), "big")
            assert stored == tok_count * TOKENS, (block, at)
            checked += 1
    assert checked >= 2 * ROUNDS
    # Before the token existed: no code, so no balance to call for.
    assert w3.eth.get_code(token.address, deployed_at - 1) == b""
    assert w3.eth.get_code(token.address, deployed_at) == w3.eth.get_code(token.address)
    # The sender's balance went down by exactly what each block charged it.
    for block in sorted(set(included)):
        spent = w3.eth.get_balance(sender.address, block - 1) - w3.eth.get_balance(sender.address, block)
        receipts = [r for r in w3.eth.get_block_receipts(block) if r["from"] == sender.address]
        fee = sum(r["gasUsed"] * r["effectiveGasPrice"] for r in receipts)
        value = VALUE_WEI * sum(1 for r in receipts if r["to"] == recipient)
        assert spent == fee + value, block


def test_blocks_before_the_window_answer_with_the_oldest_kept(start_node, dev_accounts):
    window = 8
    n = start_node("--history-blocks", str(window), "--block-time-ms", "200")
    w3 = Web3(Web3.HTTPProvider(n.url))
    wait_blocks(w3, window + 4)
    dev = dev_accounts[0].address
    head = w3.eth.block_number
    with pytest.raises(Web3RPCError) as err:
        w3.eth.get_balance(dev, 1)
    message = str(err.value)
    assert "-32000" in message and "historical state not available" in message, message
    oldest = int(re.search(r"oldest block with state, (\d+)", message).group(1))
    assert head - window <= oldest <= w3.eth.block_number - window, (head, oldest)
    # Blocks inside the window answer.
    head = w3.eth.block_number
    assert w3.eth.get_balance(dev, head - 2) == w3.eth.get_balance(dev, head)


def test_replay_matches_what_was_committed(start_node, dev_accounts, token_artifact):
    """`kestrel replay` re-executes a stopped node's blocks on their historical state with both
    executors and finds every block as committed."""
    n = start_node("--block-time-ms", "200")
    w3 = Web3(Web3.HTTPProvider(n.url))
    sender = dev_accounts[2]
    token = deploy_token(w3, sender, token_artifact, "Replay", "RPL", 10**6)
    hashes = []
    nonce = w3.eth.get_transaction_count(sender.address)
    for i in range(20):
        tx = token.functions.transfer(Account.create().address, i + 1).build_transaction({
            "from": sender.address, "nonce": nonce + i, "chainId": CHAIN_ID, **fees(w3)})
        hashes.append(w3.eth.send_raw_transaction(sender.sign_transaction(tx).raw_transaction))
    for h in hashes:
        assert wait_receipt(w3, h)["status"] == 1
    head = w3.eth.block_number
    n.stop()
    for executor in ("sequential", "parallel"):
        out = subprocess.run([str(kestrel_bin()), "replay", "--datadir", str(n.datadir), "--from", "1",
                              "--executor", executor, "--quiet"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        matched = re.search(r"^(\d+) blocks matched, (\d+) mismatched \((\d+) transactions\)$",
                            out.stdout, re.M)
        assert matched, out.stdout
        assert int(matched.group(1)) >= head and matched.group(2) == "0", out.stdout
        assert int(matched.group(3)) >= 21, out.stdout

    # `kestrel db stats` on the same datadir: the history the blocks recorded, and an archive
    # segment per run of blocks that together hold every finalized block.
    out = subprocess.run([str(kestrel_bin()), "db", "stats", "--datadir", str(n.datadir), "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    tables = {t["table"]: t for t in stats["tables"]}
    # One account entry per changed account and block; one slot entry per recipient at least.
    # A block's entries sit in the change sets until its batch of 64 blocks moves into the
    # key-ordered tables, so they are in one or the other.
    def entries(*names):
        return sum(tables[name]["entries"] for name in names)
    assert entries("AccountHistory", "AccountChangeSets") > 0
    assert entries("StorageHistory", "StorageChangeSets") >= 20
    assert tables["Headers"]["entries"] == head + 1 or tables["Headers"]["entries"] > head
    assert sum(s["blocks"] for s in stats["segments"]) >= head
    assert all(s["bytes"] > 0 for s in stats["segments"])
