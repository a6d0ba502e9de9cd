"""A new full node joins four validators by state sync, one of which lies.

Real `kestrel` processes on loopback: `init-testnet --validators 4 --full-nodes 1 --accounts
10000` (a state of 16 chunks, so every validator is asked for some), and in the genesis a
contract of 3,000 storage slots. The validators cut chunks into parts of 16 KiB
(`KESTREL_TEST_STATE_PART_BYTES`, test only): every chunk comes in parts, and the contract's
storage runs on across several. Validator 0 serves every state chunk damaged
(`KESTREL_TEST_CORRUPT_STATE_CHUNK=all`, a test-only switch of the serving side,
docs/OPERATORS.md; the contract's chunk in its last slot, past its first part). Once the chain
has some blocks, the full node starts with an empty datadir and `--sync state`:

- it fetches the state of a recent finalized block, catches validator 0's bad chunk, drops it,
  gets that chunk from another, and finishes: every chunk written, the state root of its base
  block the validators', the contract's storage theirs, and the blocks after it equal to theirs;
- before its base it has nothing: no block (null), and historical state is refused with geth's
  wording;
- it follows the chain from there: a transaction sent to it is included and its receipt served.

A second full node stops dead in the middle of its state sync (a test-only exit once some chunks
are written, as if killed) and, started again, resumes after the chunks it had written.
"""

from __future__ import annotations

import json
import os
import re

import pytest
import requests

from testnet import Sender, Testnet, series, wait_until

pytestmark = pytest.mark.timeout(300)

BLOCK_TIME_MS = 100
ACCOUNTS = 10_000
CHUNKS = 16  # depth 1: 10,000 accounts at ~4,096 a chunk
TIMEOUT_S = 60.0
RECIPIENT = "0x000000000000000000000000000000000000bEEF"
CORRUPT_ENV = "KESTREL_TEST_CORRUPT_STATE_CHUNK"
EXIT_ENV = "KESTREL_TEST_STATE_SYNC_EXIT_AFTER_CHUNKS"
EXIT_CODE = 75
PART_BYTES_ENV = "KESTREL_TEST_STATE_PART_BYTES"
PART_BYTES = 16 << 10
CONTRACT = "0x00000000000000000000000000000000c0ffee00"
CONTRACT_SLOTS = 3_000  # about 110 KB of storage: 7 parts or more at 16 KiB


def add_contract(genesis_path) -> None:
    """A contract whose storage does not fit one part: slot i holds i, for i in 1..=3,000."""
    genesis = json.loads(genesis_path.read_text())
    genesis["alloc"][CONTRACT] = {
        "balance": "0x1",
        "code": "0x600054600055",
        "storage": {f"0x{i:064x}": f"0x{i:064x}" for i in range(1, CONTRACT_SLOTS + 1)},
    }
    genesis_path.write_text(json.dumps(genesis))


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    t = Testnet(tmp_path_factory.mktemp("testnet-statesync"), 4,
                ["--block-time-ms", str(BLOCK_TIME_MS)], full_nodes=2,
                init_args=["--accounts", str(ACCOUNTS)])
    add_contract(t.root / "genesis.json")
    try:
        os.environ[PART_BYTES_ENV] = str(PART_BYTES)
        os.environ[CORRUPT_ENV] = "all"
        t.validators[0].start(wait=False)
        del os.environ[CORRUPT_ENV]
        for v in t.validators[1:]:
            v.start(wait=False)
        del os.environ[PART_BYTES_ENV]
        for v in t.validators:
            v.wait_ready()
        yield t
    finally:
        os.environ.pop(CORRUPT_ENV, None)
        os.environ.pop(PART_BYTES_ENV, None)
        codes = t.stop_all()
        print(f"\nnodes stopped, exit codes {codes}; logs under {t.root}")


def metric(node, name: str) -> float:
    values = series(node, name)
    return sum(values.values()) if values else 0.0


def test_a_new_node_joins_by_state_sync_despite_a_lying_validator(net):
    wait_until(lambda: net[1].head() >= 60, TIMEOUT_S, "the chain's first 60 blocks")
    full = net.full_nodes[0]
    full.extra_args = [*full.extra_args, "--sync", "state"]
    full.start()
    health = []

    def synced():
        r = requests.get(full.url + "/health", timeout=2)
        health.append((r.status_code, r.text))
        return r.status_code == 200

    wait_until(synced, TIMEOUT_S, "the state-synced node healthy", poll=0.05)
    base = int(metric(full, "kestrel_sync_target_block"))
    assert base >= 60, base
    unexpected = [(code, body) for code, body in health[:-1]
                  if not (code == 503 and ("syncing" in body or "stalled" in body))]
    assert not unexpected, (unexpected[:5], len(health))

    # Validator 0's damaged chunk was caught, validator 0 dropped, the chunk fetched elsewhere.
    assert metric(full, "kestrel_sync_state_bad_chunks_total") >= 1
    assert metric(full, "kestrel_sync_state_peers_dropped_total") == 1
    assert metric(full, "kestrel_sync_state_chunks_done") == CHUNKS
    assert metric(full, "kestrel_sync_state_accounts_total") >= ACCOUNTS
    # Every chunk in parts: two at least each, the contract's several more.
    parts = metric(full, "kestrel_sync_state_parts_total")
    assert parts >= 2 * CHUNKS + CONTRACT_SLOTS * 36 // PART_BYTES, parts
    assert "dropped a validator from state sync" in full.log_path.read_text()
    # The validators snapshot the same (aligned) block, so chunks came from several of them.
    served = [metric(v, "kestrel_sync_state_chunks_served_total") for v in net.validators[1:]]
    assert sum(1 for n in served if n > 0) >= 2, served
    assert sum(served) >= CHUNKS - 1, served

    # Its blocks from the base on are the validators': hash, state root, receipts root.
    top = base + 10
    wait_until(lambda: full.head() >= top, TIMEOUT_S, "the full node past its base")
    for n in range(base + 1, top + 1):
        ours = full.block(n)
        theirs = net[1].block(n)
        assert (ours["hash"], ours["stateRoot"], ours["receiptsRoot"]) == (
            theirs["hash"], theirs["stateRoot"], theirs["receiptsRoot"]), n
    assert full.call("eth_getBlockByNumber", [hex(base), False]) is None, "the base has no body"
    assert full.call("eth_getBlockByNumber", ["0x1", False]) is None
    with pytest.raises(RuntimeError, match="historical state not available"):
        full.call("eth_getBalance", [RECIPIENT, hex(base - 1)])
    # The contract's storage, which ran on across parts, is all there.
    for slot in (1, CONTRACT_SLOTS // 2, CONTRACT_SLOTS):
        value = full.call("eth_getStorageAt", [CONTRACT, hex(slot), hex(base)])
        assert int(value, 16) == slot, (slot, value)
    assert full.call("eth_getCode", [CONTRACT, hex(base)]) == "0x600054600055"

    # And it follows the chain: what it is sent is included, its receipt served by it.
    tx = full.call("eth_sendRawTransaction", ["0x" + Sender(2).transfer(RECIPIENT, 7).hex()])
    receipt = wait_until(lambda: full.receipt(tx), TIMEOUT_S, "the receipt on the full node")
    assert receipt["status"] == "0x1"
    number = int(receipt["blockNumber"], 16)
    wait_until(lambda: net[1].head() >= number, TIMEOUT_S, "validator 1 at the receipt's block")
    assert net[1].block(number)["stateRoot"] == full.block(number)["stateRoot"]
    assert full.call("eth_getBalance", [RECIPIENT, hex(number)]) == "0x7"


def test_a_state_sync_killed_midway_resumes_after_its_written_chunks(net):
    full = net.full_nodes[1]
    full.extra_args = [*full.extra_args, "--sync", "state"]
    os.environ[EXIT_ENV] = "1"
    try:
        full.start(wait=False)
    finally:
        del os.environ[EXIT_ENV]
    assert full.proc.wait(timeout=TIMEOUT_S) == EXIT_CODE, full.log_tail()
    first = full.log_path.read_text()
    assert "TEST: exiting in the middle of the state sync" in first
    block = int(re.search(r"chose a snapshot block=(\d+)", first).group(1))

    full.start()
    wait_until(lambda: full.head() > block, TIMEOUT_S, "the restarted node past its base")
    second = full.log_path.read_text()
    resumed = re.search(r"resuming a state restore block=(\d+) done=(\d+)", second)
    assert resumed, "the restart did not resume"
    assert int(resumed.group(1)) == block
    done = int(resumed.group(2))
    assert 1 <= done <= CHUNKS
    # Only the chunks not written before the exit were written again.
    written = metric(full, "kestrel_sync_state_accounts_total")
    assert (written < ACCOUNTS) if done < CHUNKS else written == 0, (done, written)
    assert metric(full, "kestrel_sync_state_chunks_done") == CHUNKS
    n = full.head()
    wait_until(lambda: net[1].head() >= n, TIMEOUT_S, "validator 1 at the full node's head")
    assert full.block(n)["stateRoot"] == net[1].block(n)["stateRoot"]
