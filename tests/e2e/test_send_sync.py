"""`eth_sendRawTransactionSync` (EIP-7966): the receipt comes back in the same call, the one
`eth_getTransactionReceipt` serves; a transaction that cannot be included in time (behind a nonce
gap) answers error 4 with its hash, and stays in the pool."""

from __future__ import annotations


import time

from eth_account import Account

from e2e_util import fees, own_node_fixtures, raw_rpc
from kestrel_node import CHAIN_ID, DEV_KEYS


# The session's node is test_web3's, which expects the dev accounts untouched: these tests spend
# from them on a node of their own.
node, w3 = own_node_fixtures()


def signed(w3, account, nonce: int) -> str:
    raw = account.sign_transaction({
        "type": 2, "chainId": CHAIN_ID, "nonce": nonce, "to": account.address, "value": 1,
        "gas": 21_000, **fees(w3)}).raw_transaction
    return "0x" + bytes(raw).hex()


def test_send_sync_returns_the_receipt_or_times_out_with_the_hash(node, w3):
    sender = Account.from_key(DEV_KEYS[1])
    nonce = w3.eth.get_transaction_count(sender.address, "pending")
    t0 = time.monotonic()
    answer = raw_rpc(node.url, "eth_sendRawTransactionSync", [signed(w3, sender, nonce)])
    took = time.monotonic() - t0
    receipt = answer["result"]
    assert receipt["status"] == "0x1", answer
    again = raw_rpc(node.url, "eth_getTransactionReceipt", [receipt["transactionHash"]])["result"]
    assert again == receipt
    assert took < 5.0, took

    gapped = signed(w3, sender, nonce + 2)
    t0 = time.monotonic()
    answer = raw_rpc(node.url, "eth_sendRawTransactionSync", [gapped, "0x12c"])  # 300 ms
    took = time.monotonic() - t0
    err = answer["error"]
    assert err["code"] == 4, answer
    assert err["message"] == "The transaction was added to the transaction pool but wasn't processed in 300ms"
    h = w3.keccak(hexstr=gapped).to_0x_hex()
    assert err["data"] == h
    assert 0.3 <= took < 2.0, took
    assert raw_rpc(node.url, "eth_getTransactionByHash", [h])["result"]["hash"] == h
    # Fill the gap so the session's other tests see a clean pool for this sender.
    raw_rpc(node.url, "eth_sendRawTransactionSync", [signed(w3, sender, nonce + 1)])
