#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/corpus/<target>/: a few valid inputs per target, so each run
starts past the first parsing layer. Needs the end-to-end venv (eth-account, rlp):

    tests/e2e/.venv/bin/python fuzz/make_corpus.py

Deterministic: the same files every time (fixed keys, no random bytes but a seeded PRNG)."""

import json
import random
import re
import struct
from pathlib import Path

import rlp
from eth_account import Account
from eth_keys import keys
from eth_utils import keccak

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
CORPUS = ROOT / "corpus"
FIXTURES = REPO.parent / "shared" / "fixtures"

CHAIN_ID = 1337
DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
GWEI = 10**9


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def signed_txs():
    acct = Account.from_key(DEV_KEY)
    to = "0x" + "11" * 20
    base = {"chainId": CHAIN_ID, "nonce": 0, "gas": 100_000, "to": to, "value": 1}
    txs = {
        "legacy": {**base, "gasPrice": 2 * GWEI},
        "eip2930": {
            **base,
            "type": 1,
            "gasPrice": 2 * GWEI,
            "accessList": [{"address": to, "storageKeys": ["0x" + "00" * 31 + "01"]}],
        },
        "eip1559": {**base, "type": 2, "maxFeePerGas": 3 * GWEI, "maxPriorityFeePerGas": GWEI},
        "eip1559_create": {
            **{k: v for k, v in base.items() if k != "to"},
            "type": 2,
            "maxFeePerGas": 3 * GWEI,
            "maxPriorityFeePerGas": GWEI,
            "data": "0x6000600055",
        },
    }
    out = {name: bytes(acct.sign_transaction(tx).raw_transaction) for name, tx in txs.items()}
    auth = acct.sign_authorization({"chainId": CHAIN_ID, "address": to, "nonce": 1})
    set_code = {
        **base,
        "type": 4,
        "maxFeePerGas": 3 * GWEI,
        "maxPriorityFeePerGas": GWEI,
        "authorizationList": [auth],
    }
    out["eip7702"] = bytes(acct.sign_transaction(set_code).raw_transaction)
    # The free-block-space transaction: a set-code transaction with no authorizations,
    # signed by hand (eth-account refuses to build one).
    fields = [CHAIN_ID, 1, GWEI, 3 * GWEI, 25_000_000, bytes.fromhex("11" * 20), 0, b"", [], []]
    sighash = keccak(b"\x04" + rlp.encode(fields))
    sig = keys.PrivateKey(bytes.fromhex(DEV_KEY[2:])).sign_msg_hash(sighash)
    out["eip7702_empty_auth"] = b"\x04" + rlp.encode(fields + [sig.v, sig.r, sig.s])
    return out


def fixture_blocks(limit):
    """Small block RLPs from the Ethereum tests, typed transactions first."""
    found = []
    for path in sorted(FIXTURES.rglob("*.json")):
        try:
            tests = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for test in tests.values():
            for block in test.get("blocks", []):
                raw = block.get("rlp", "")
                if "expectException" in block or not raw or len(raw) > 4000:
                    continue
                found.append(bytes.fromhex(raw[2:]))
        if len(found) >= 200:
            break
    # Prefer blocks with transactions of several types: a crude score by type bytes seen.
    found.sort(key=lambda b: (-len(set(re.findall(rb"\xb8.[\x01\x02\x04]", b))), len(b)))
    return found[:limit]


def frame(frame_type, payload):
    return struct.pack(">BBI", 1, frame_type, len(payload)) + payload


def compressed(secret_byte):
    return keys.PrivateKey(bytes([secret_byte]) * 32).public_key.to_compressed_bytes()


def main():
    txs = signed_txs()
    for name, raw in txs.items():
        write("tx_ingress", name, raw)

    # block_payload: 0 = block RLP, 1 = payload, 2 = validator wire.
    for i, block in enumerate(fixture_blocks(4)):
        write("block_payload", f"import_block_{i}", b"\x00" + block)
    beneficiary = bytes.fromhex("22" * 20)
    valid = [txs["legacy"], txs["eip1559"], txs["eip2930"], txs["eip7702"]]
    write("block_payload", "payload", b"\x01" + rlp.encode([beneficiary, 30_000_000, GWEI, valid]))
    write("block_payload", "payload_empty", b"\x01" + rlp.encode([beneficiary, 30_000_000, GWEI, []]))
    write(
        "block_payload",
        "payload_empty_auth",
        b"\x01" + rlp.encode([beneficiary, 30_000_000, GWEI, [txs["eip7702_empty_auth"]]]),
    )
    payload = rlp.encode([beneficiary, 30_000_000, GWEI, valid[:1]])
    write("block_payload", "wire_proposal", b"\x02" + b"\x01" + rlp.encode([payload, b"\x01\x02"]))
    write("block_payload", "wire_sync_blocks", b"\x02" + b"\x00" + rlp.encode([7, 32]))
    write("block_payload", "wire_sync_payload", b"\x02" + b"\x01" + rlp.encode(b"\x33" * 32))

    # net_frames: [cap selector, chunk selector] + a stream of frames.
    hello = struct.pack(">Q", CHAIN_ID) + compressed(2) + b"\x07" * 32
    stream = frame(0xF0, hello) + frame(0xF1, b"\x05" * 64) + frame(1, b"consensus") + frame(4, b"")
    write("net_frames", "handshake_then_app", b"\x02\x10" + stream)
    write("net_frames", "hello_small_cap", b"\x00\x03" + frame(0xF0, hello))
    write("net_frames", "oversized", b"\x01\x01" + frame(2, b"x" * 100))

    # net_handshake: mode + what the peer sends. Key byte 2 is a known peer, 5 is not.
    write("net_handshake", "accept_known_peer", b"\x00" + frame(0xF0, hello) + frame(0xF1, b"\x05" * 64))
    write("net_handshake", "dial_known_peer", b"\x01" + frame(0xF0, hello) + frame(0xF1, b"\x05" * 64))
    stranger = struct.pack(">Q", CHAIN_ID) + compressed(5) + b"\x07" * 32
    write("net_handshake", "unknown_peer", b"\x00" + frame(0xF0, stranger))
    write("net_handshake", "wrong_network", b"\x00" + frame(0xF0, struct.pack(">Q", 1) + hello[8:]))

    # rpc_params: 0xf0 + a whole request, or a method index (sorted names) + params.
    addr = Account.from_key(DEV_KEY).address
    requests = [
        ("eth_chainId", []),
        ("eth_getBalance", [addr, "latest"]),
        ("eth_getTransactionCount", [addr, "pending"]),
        ("eth_getStorageAt", [addr, "0x0", "latest"]),
        ("eth_getBlockByNumber", ["0x0", True]),
        ("eth_getBlockByHash", ["0x" + "00" * 32, False]),
        ("eth_call", [{"from": addr, "to": "0x" + "11" * 20, "data": "0x"}, "latest"]),
        ("eth_estimateGas", [{"from": addr, "to": "0x" + "11" * 20, "value": "0x1"}]),
        ("eth_feeHistory", ["0x4", "latest", [25, 75]]),
        ("eth_getLogs", [{"fromBlock": "0x0", "toBlock": "latest", "topics": [None]}]),
        ("eth_sendRawTransaction", ["0x" + txs["eip1559"].hex()]),
        ("eth_getTransactionReceipt", ["0x" + "00" * 32]),
        ("eth_getBlockReceipts", ["earliest"]),
    ]
    for method, params in requests:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        write("rpc_params", f"request_{method}", b"\xf0" + body.encode())
    names = sorted(re.findall(r'name = "(\w+)"', (REPO / "rpc/src/api.rs").read_text()))
    for method, params in requests[:6]:
        write("rpc_params", f"params_{method}", bytes([names.index(method)]) + json.dumps(params).encode())

    # consensus_machine: the input is a script of steps; seeded bytes make a few to start from.
    rng = random.Random(19)
    for i, size in enumerate([64, 512, 2048, 4096]):
        write("consensus_machine", f"script_{i}", bytes(rng.randrange(256) for _ in range(size)))


if __name__ == "__main__":
    main()
