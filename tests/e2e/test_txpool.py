"""The `txpool_*` methods and the small ones (`net_listening`, `web3_sha3`, `eth_blobBaseFee`),
side by side with anvil: the same signed transactions go to a fresh Kestrel dev node and to
anvil (same chain id, same dev accounts), and web3.py's `geth.txpool` reads both answers, which
must agree field by field.

Both pools hold what cannot run yet: transactions behind a nonce gap (queued); Kestrel takes a
pending run into its next block at once, so the test then fills the gap on Kestrel and watches
the queued ones go. anvil mines nothing here (`--no-mining`). Differences that come from the
node, not the pool, are normalized and listed in `NORMALIZED`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import pytest
from eth_account import Account
from web3 import Web3

from e2e_util import run_anvil
from kestrel_node import CHAIN_ID, DEV_KEYS, KestrelNode

# Fields a pooled transaction may show differently for reasons outside the pool: `gasPrice` is,
# as geth shows it, what the transaction would pay at the next base fee (anvil shows the fee cap).
NORMALIZED = ("gasPrice",)
GAPPED_NONCES = (5, 6, 9)
RECIPIENT = Web3.to_checksum_address("0x" + "ee" * 20)


@pytest.fixture
def anvil(tmp_path):
    yield from run_anvil(tmp_path, "--no-mining")


@pytest.fixture
def kestrel(tmp_path):
    node = KestrelNode(datadir=tmp_path / "data", log_dir=tmp_path)
    node.start()
    yield Web3(Web3.HTTPProvider(node.url))
    node.stop()


def transfer(account, nonce: int, max_fee: int) -> bytes:
    tx = {"type": 2, "chainId": CHAIN_ID, "nonce": nonce, "to": RECIPIENT, "value": 7,
          "gas": 21_000, "maxFeePerGas": max_fee, "maxPriorityFeePerGas": 1}
    return bytes(account.sign_transaction(tx).raw_transaction)


def plain(obj):
    """web3's AttributeDicts and HexBytes as plain JSON-like values."""
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, bytes):
        return "0x" + obj.hex()
    return obj


def normalized(content: dict) -> dict:
    """Sender keys in lower case (geth and Kestrel write them EIP-55 checksummed, anvil in lower
    case) and the `NORMALIZED` fields left out."""
    def tx(t):
        return {k: v for k, v in t.items() if k not in NORMALIZED} if isinstance(t, dict) else t

    def txs(by_nonce):
        return {nonce: tx(t) for nonce, t in by_nonce.items()}

    out = {}
    for state, m in plain(content).items():
        # `txpool_contentFrom` has nonces under each state, `txpool_content` senders.
        is_from = all(k.isdigit() for k in m)
        out[state] = txs(m) if is_from else {a.lower(): txs(v) for a, v in m.items()}
    return out


def test_txpool_matches_anvil(kestrel, anvil):
    queued = Account.from_key(DEV_KEYS[7])
    raws = [transfer(queued, n, 10**11) for n in GAPPED_NONCES]
    for w3 in (kestrel, anvil):
        for raw in raws:
            w3.eth.send_raw_transaction(raw)

    k_status, a_status = kestrel.geth.txpool.status(), anvil.geth.txpool.status()
    assert plain(k_status) == plain(a_status) == {"pending": "0x0", "queued": hex(len(GAPPED_NONCES))}

    k_content, a_content = kestrel.geth.txpool.content(), anvil.geth.txpool.content()
    assert normalized(k_content) == normalized(a_content)
    assert sorted(k_content["queued"][queued.address]) == sorted(str(n) for n in GAPPED_NONCES)
    one = k_content["queued"][queued.address][str(GAPPED_NONCES[0])]
    assert one["blockHash"] is None and one["blockNumber"] is None
    assert one["hash"] == Web3.keccak(raws[0]).to_0x_hex()

    lower = lambda m: {s: {a.lower(): v for a, v in by.items()} for s, by in plain(m).items()}
    assert lower(kestrel.geth.txpool.inspect()) == lower(anvil.geth.txpool.inspect())
    # anvil has no `txpool_contentFrom`: it must be the sender's part of `txpool_content`.
    k_from = kestrel.provider.make_request("txpool_contentFrom", [queued.address])["result"]
    assert plain(k_from) == {state: plain(k_content[state].get(queued.address, {}))
                             for state in ("pending", "queued")}

    # The gap filled on Kestrel: the queued ones become pending, are taken and leave the pool.
    for n in range(GAPPED_NONCES[0]):
        kestrel.eth.send_raw_transaction(transfer(queued, n, 10**11))
    deadline = time.monotonic() + 20
    while kestrel.geth.txpool.content()["queued"].get(queued.address, {}).keys() - {"9"}:
        assert time.monotonic() < deadline, kestrel.geth.txpool.content()
        time.sleep(0.1)
    assert list(kestrel.geth.txpool.content()["queued"][queued.address]) == ["9"]


def test_small_methods_match_anvil(kestrel, anvil):
    for method, params in [("net_listening", []), ("web3_sha3", ["0x68656c6c6f"]),
                           ("web3_sha3", ["0x"]), ("eth_blobBaseFee", [])]:
        k = kestrel.provider.make_request(method, params)
        a = anvil.provider.make_request(method, params)
        assert k.get("result") == a.get("result"), (method, k, a)
    # A chain of one validator has no peers (anvil, no network, says the same).
    assert kestrel.provider.make_request("net_peerCount", [])["result"] == "0x0"
