"""`eth_getProof` through web3.py, each proof checked against the block's state root with
ethereum/py-trie (an independent Merkle-Patricia trie): an externally owned account, a contract
with storage (set and unset slots), and an account that does not exist."""

from __future__ import annotations

import pytest
import rlp
from eth_abi import encode as abi_encode
from eth_utils import keccak
from trie import HexaryTrie
from web3 import Web3
from web3.exceptions import Web3RPCError

from e2e_util import deploy_token, own_node_fixtures

BALANCE_OF_SLOT = 3
ATTEMPTS = 20

node, w3 = own_node_fixtures()


def proof_at_head(w3: Web3, address: str, keys: list) -> tuple[dict, bytes]:
    """A proof and the state root of the block it is for (retried if the head moved between
    reading the head and asking: proofs are served at the head only)."""
    for _ in range(ATTEMPTS):
        head = w3.eth.block_number
        try:
            proof = w3.eth.get_proof(address, keys, head)
        except Web3RPCError as err:
            assert "latest block only" in str(err), err
            continue
        return proof, bytes(w3.eth.get_block(head)["stateRoot"])
    raise AssertionError(f"no proof at the head in {ATTEMPTS} attempts")


def check_account(proof: dict, root: bytes) -> None:
    leaf = HexaryTrie.get_from_proof(root, keccak(hexstr=proof["address"]),
                                     [rlp.decode(bytes(n)) for n in proof["accountProof"]])
    if proof["nonce"] == 0 and proof["balance"] == 0 and proof["codeHash"] == keccak(b""):
        assert leaf == b"", "a proof of absence"
        return
    nonce, balance, storage_root, code_hash = rlp.decode(leaf)
    assert int.from_bytes(nonce, "big") == proof["nonce"]
    assert int.from_bytes(balance, "big") == proof["balance"]
    assert storage_root == bytes(proof["storageHash"])
    assert code_hash == bytes(proof["codeHash"])


def as_int(value) -> int:
    """web3.py gives storage proof values as bytes."""
    return value if isinstance(value, int) else int.from_bytes(bytes(value), "big")


def check_slot(proof: dict, slot: dict) -> None:
    # A key given as a quantity comes back as one: the trie key is its 32-byte form, hashed.
    key = bytes(slot["key"]).rjust(32, b"\0")
    value = HexaryTrie.get_from_proof(bytes(proof["storageHash"]), keccak(key),
                                      [rlp.decode(bytes(n)) for n in slot["proof"]])
    expected = as_int(slot["value"])
    assert (int.from_bytes(rlp.decode(value), "big") if value else 0) == expected


def test_proofs_verify_against_the_state_root(w3, dev_accounts, token_artifact):
    holder = dev_accounts[7]
    token = deploy_token(w3, holder, token_artifact, "Proof", "PRF", 10**6)

    proof, root = proof_at_head(w3, holder.address, [])
    check_account(proof, root)
    assert proof["balance"] > 0 and proof["nonce"] >= 1

    held = keccak(abi_encode(["address", "uint256"], [holder.address, BALANCE_OF_SLOT]))
    unset = keccak(abi_encode(["address", "uint256"], ["0x" + "77" * 20, BALANCE_OF_SLOT]))
    proof, root = proof_at_head(w3, token.address, ["0x" + held.hex(), "0x" + unset.hex(), 2])
    check_account(proof, root)
    values = [as_int(slot["value"]) for slot in proof["storageProof"]]
    assert values == [10**6, 0, 10**6], values  # slot 2 is totalSupply
    for slot in proof["storageProof"]:
        check_slot(proof, slot)

    absent, root = proof_at_head(w3, "0x" + "42" * 20, ["0x" + "00" * 32])
    check_account(absent, root)
    assert as_int(absent["storageProof"][0]["value"]) == 0 and absent["storageProof"][0]["proof"] == []


def test_proofs_before_the_head_are_refused_with_a_clear_error(w3):
    with pytest.raises(Web3RPCError) as err:
        w3.eth.get_proof("0x" + "42" * 20, [], 0)
    assert "proofs are served at the latest block only" in str(err.value)
