"""A SIGKILL between the account trie's checkpoints: the depth-4 branches kept in memory are lost,
the node table holds their old values (storage/src/trie/deferred.rs). The restarted node rebuilds
the account trie before it serves, checks it against the head's state root, and its eth_getProof
answers verify against the block's state root (py-trie's proof verifier), before and after more
blocks.

The state has 60,000 accounts, so the account trie has depth-4 branches (about 15,000) and the
load's transfers update them in place."""

from __future__ import annotations

import json
import random
import re
import subprocess
import time
from collections import defaultdict

import requests
import rlp
from eth_utils import keccak
from trie import HexaryTrie

from kestrel_node import KestrelNode, loadgen_bin, run_loadgen

ACCOUNTS = 60_000
SEED = 11
RATE = 400
LOAD_S = 4
# A kill may land just after a checkpoint, when nothing waits in memory: kill again then.
KILLS_MAX = 6
REBUILDING = "rebuilding the account trie"


def rpc(url: str, method: str, *params):
    reply = requests.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                     "params": list(params)}, timeout=30).json()
    assert "error" not in reply, (method, reply)
    return reply["result"]


def deferred_nodes(node: KestrelNode) -> float:
    text = requests.get(node.metrics_url, timeout=10).text
    found = re.search(r"^kestrel_storage_trie_deferred_nodes (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def check_proofs(node: KestrelNode, addresses: list[str]) -> int:
    """Every address's eth_getProof (served at the latest block) verifies against the latest
    block's state root; returns that block's number."""
    for _ in range(20):
        block = rpc(node.url, "eth_getBlockByNumber", "latest", False)
        proofs = [rpc(node.url, "eth_getProof", a, [], "latest") for a in addresses]
        if rpc(node.url, "eth_getBlockByNumber", "latest", False)["stateRoot"] == block["stateRoot"]:
            break
    else:
        raise AssertionError("the state root moved during every round of proofs")
    root = bytes.fromhex(block["stateRoot"][2:])
    for address, proof in zip(addresses, proofs):
        nodes = [rlp.decode(bytes.fromhex(n[2:])) for n in proof["accountProof"]]
        leaf = HexaryTrie.get_from_proof(root, keccak(bytes.fromhex(address[2:])), nodes)
        if int(proof["balance"], 16) == 0 and int(proof["nonce"], 16) == 0:
            assert leaf == b"", address
            continue
        nonce, balance, _storage_root, _code_hash = rlp.decode(leaf)
        assert int.from_bytes(balance, "big") == int(proof["balance"], 16), address
        assert int.from_bytes(nonce, "big") == int(proof["nonce"], 16), address
    return int(block["number"], 16)


def load_args(node: KestrelNode) -> list[str]:
    return ["--rpc", node.url, "--accounts", str(ACCOUNTS), "--seed", str(SEED),
            "--genesis-funded", "--rate", str(RATE), "--duration", str(LOAD_S), "--batch", "100"]


def test_kill9_between_checkpoints_rebuilds_the_account_trie(tmp_path):
    genesis = tmp_path / "genesis.json"
    out = run_loadgen("--genesis-out", str(genesis), "--accounts", str(ACCOUNTS),
                      "--seed", str(SEED), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    node = KestrelNode(datadir=tmp_path / "data", log_dir=tmp_path, genesis=genesis,
                       extra_args=["--block-time-ms", "250"])
    node.start()
    rng = random.Random(SEED)
    try:
        for _ in range(KILLS_MAX):
            # Killed under load: once the load stops, the next checkpoint writes everything.
            sender = subprocess.Popen([str(loadgen_bin()), "--quiet", *load_args(node)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + 60
                while deferred_nodes(node) == 0:
                    assert time.monotonic() < deadline, "no branch update kept in memory"
                    time.sleep(0.05)
                time.sleep(rng.uniform(0, 1))
                node.kill9()
            finally:
                sender.kill()
                sender.wait()
            node.start()
            if REBUILDING in node.log_path.read_text():
                break
        else:
            raise AssertionError(f"{KILLS_MAX} kills, each just after a checkpoint")
        log = node.log_path.read_text()
        assert "account trie rebuilt" in log, log[-3000:]
        # The branches whose new values were lost with the process are the depth-4 ones above
        # the accounts the last blocks before the kill changed. A proof of such an account
        # rebuilds its own child of the branch, so the proofs that show a stale branch are its
        # other children's: the funded accounts beside the changed ones, unchanged themselves.
        head = int(rpc(node.url, "eth_blockNumber"), 16)
        touched = set()
        for number in range(max(1, head - 10), head + 1):
            block = rpc(node.url, "eth_getBlockByNumber", hex(number), True)
            touched |= {a.lower() for tx in block["transactions"] for a in (tx["from"], tx["to"])}
        assert touched, "blocks with transfers before the kill"
        by_branch = defaultdict(list)
        for address in json.loads(genesis.read_text())["alloc"]:
            address = "0x" + address.removeprefix("0x").lower()
            by_branch[keccak(bytes.fromhex(address[2:]))[:2]].append(address)
        beside = sorted({b for t in touched for b in by_branch[keccak(bytes.fromhex(t[2:]))[:2]]}
                        - touched)
        assert beside, "unchanged accounts under the changed accounts' depth-4 branches"
        sample = rng.sample(beside, min(200, len(beside)))
        # And absent accounts: proofs of exclusion.
        sample += ["0x" + bytes(rng.randrange(256) for _ in range(20)).hex() for _ in range(4)]
        repaired_at = check_proofs(node, sample)
        out = run_loadgen(*load_args(node), timeout=LOAD_S + 120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert check_proofs(node, sample) > repaired_at
    finally:
        node.stop()
