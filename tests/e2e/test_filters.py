"""Poll filters through web3.py's filter API (`eth_newBlockFilter`, `eth_newFilter`,
`eth_getFilterChanges`, `eth_getFilterLogs`, `eth_uninstallFilter`): every new block and every
matching event comes exactly once and in order, and an uninstalled filter is gone with geth's
error."""

from __future__ import annotations

import time

import pytest
from web3 import Web3
from web3.exceptions import Web3RPCError

from e2e_util import deploy_token, fees, own_node_fixtures, wait_blocks, wait_receipt
from kestrel_node import CHAIN_ID

POLL_TIMEOUT_S = 20.0
TRANSFERS = 4


# The session's node is test_web3's, which expects the dev accounts untouched: these tests spend
# from them on a node of their own.
node, w3 = own_node_fixtures()


def poll_until(filt, count: int) -> list:
    """Polls `filt` until it returned `count` entries in all; more is a failure too."""
    got = []
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while len(got) < count:
        assert time.monotonic() < deadline, f"{len(got)} of {count} entries within {POLL_TIMEOUT_S}s"
        got += filt.get_new_entries()
        time.sleep(0.1)
    return got


def test_block_filter_returns_every_block_once_in_order(w3):
    filt = w3.eth.filter("latest")
    start = w3.eth.block_number
    wait_blocks(w3, 4)
    hashes = poll_until(filt, 3)
    hashes += filt.get_new_entries()
    numbers = [w3.eth.get_block(h)["number"] for h in hashes]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers
    assert numbers[0] <= start + 1
    assert [w3.eth.get_block(n)["hash"] for n in numbers] == hashes
    assert w3.eth.uninstall_filter(filt.filter_id)
    assert not w3.eth.uninstall_filter(filt.filter_id)
    with pytest.raises(Web3RPCError, match="filter not found"):
        w3.eth.get_filter_changes(filt.filter_id)


def test_log_filter_returns_every_matching_event_once(w3, dev_accounts, token_artifact):
    deployer = dev_accounts[3]
    token = deploy_token(w3, deployer, token_artifact, "Filter Token", "FLT", 10**24)

    events = token.events.Transfer.create_filter(from_block=0)
    everything = w3.eth.filter({"fromBlock": "0x0"})  # any address: our transfers and others'
    recipients = [Web3.to_checksum_address(f"0x{i + 1:040x}") for i in range(TRANSFERS)]
    nonce = w3.eth.get_transaction_count(deployer.address)
    hashes = []
    for i, to in enumerate(recipients):
        t = token.functions.transfer(to, i + 1).build_transaction({
            "from": deployer.address, "nonce": nonce + i, "gas": 100_000, "chainId": CHAIN_ID,
            **fees(w3)})
        hashes.append(w3.eth.send_raw_transaction(deployer.sign_transaction(t).raw_transaction))
    for h in hashes:
        assert wait_receipt(w3, h)["status"] == 1

    got = poll_until(events, TRANSFERS)
    assert [(e["args"]["to"], e["args"]["value"]) for e in got] == \
        [(to, i + 1) for i, to in enumerate(recipients)]
    assert [e["transactionHash"] for e in got] == hashes
    assert events.get_new_entries() == []
    # eth_getFilterLogs: the whole range from block 0, the mint included.
    assert len(events.get_all_entries()) == TRANSFERS + 1
    ours = [log for log in poll_until(everything, TRANSFERS)
            if log["address"] == token.address]
    assert [log["transactionHash"] for log in ours] == hashes
    for f in (events, everything):
        assert w3.eth.uninstall_filter(f.filter_id)


def test_pending_transaction_filter_returns_each_admitted_hash_once(w3, dev_accounts):
    sender = dev_accounts[2]
    filt = w3.eth.filter("pending")
    nonce = w3.eth.get_transaction_count(sender.address, "pending")
    sent = []
    for i in range(3):
        raw = sender.sign_transaction({
            "type": 2, "chainId": CHAIN_ID, "nonce": nonce + i, "to": sender.address, "value": 1,
            "gas": 21_000, **fees(w3)}).raw_transaction
        sent.append(w3.eth.send_raw_transaction(raw))
    got = filt.get_new_entries()
    assert [h for h in got if h in sent] == sent
    assert filt.get_new_entries() == []
    for h in sent:
        wait_receipt(w3, h)
    assert w3.eth.uninstall_filter(filt.filter_id)
