"""Validator keystores interoperate with eth-account (web3.py's keystore code, `eth-keyfile`'s
format): eth-account opens what `kestrel keygen` writes, and `kestrel node` opens what eth-account
writes, with scrypt (its default) and PBKDF2, as the validator whose address is the fee recipient
of the blocks it makes."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from eth_account import Account

from kestrel_node import kestrel_bin, node_starter, rpc

PASSWORD = "open sesame"
BLOCK_TIMEOUT_S = 30.0


@pytest.fixture
def start_node(tmp_path):
    yield from node_starter(tmp_path)


def private_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_eth_account_opens_what_keygen_writes(tmp_path):
    password = private_file(tmp_path / "password.txt", PASSWORD + "\n")
    keystore = tmp_path / "keystore.json"
    out = subprocess.run(
        [kestrel_bin(), "keygen", "--out", keystore, "--password-file", password],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    address = next(l.split()[-1] for l in out.splitlines() if l.startswith("address:"))
    key = Account.decrypt(json.loads(keystore.read_text()), PASSWORD)
    assert Account.from_key(key).address == address
    with pytest.raises(ValueError, match="MAC mismatch"):
        Account.decrypt(json.loads(keystore.read_text()), PASSWORD + "!")


@pytest.mark.parametrize("kdf", ["scrypt", "pbkdf2"])
def test_node_opens_what_eth_account_writes(start_node, tmp_path, kdf):
    account = Account.create()
    keystore = private_file(
        tmp_path / "keystore.json", json.dumps(Account.encrypt(account.key, PASSWORD, kdf=kdf))
    )
    password = private_file(tmp_path / "password.txt", PASSWORD + "\n")
    node = start_node("--validator-key", str(keystore), "--password-file", str(password))
    deadline = time.monotonic() + BLOCK_TIMEOUT_S
    while (block := rpc(node.url, "eth_getBlockByNumber", ["0x1", False]).get("result")) is None:
        assert time.monotonic() < deadline, "no block 1"
        time.sleep(0.1)
    assert block["miner"] == account.address.lower()
