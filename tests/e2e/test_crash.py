"""Crash-recovery test: SIGKILL the node at random moments under load, restart it on the
same datadir, and check that nothing a client saw committed was lost or changed (the client and
the checks: crash_client.py; the longer, multi-node run: tests/torture).

Randomness is seeded: SEED=<n> replays a run (the seed is printed and in every failure message).
KESTREL_CRASH_CYCLES (default 8) sets the number of kill/restart cycles.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

import pytest
import requests
from eth_account import Account

from crash_client import MAX_FEE_WEI, TIP_WEI, TRANSFER_GAS, call, kill_restart_cycles
from kestrel_node import CHAIN_ID, DEV_KEYS, KestrelNode, kestrel_bin

SEED = int(os.environ.get("SEED", random.SystemRandom().randrange(2**32)))
CYCLES = int(os.environ.get("KESTREL_CRASH_CYCLES", "8"))
UPTIME_S = (1.0, 5.0)            # how long the node runs between kills (uniform)
EARLY_KILL_CHANCE = 0.25         # some cycles also kill a node that is still starting up

pytestmark = pytest.mark.timeout(600)


def test_kill9_restart_loses_nothing_committed(tmp_path):
    print(f"\ncrash test SEED={SEED} cycles={CYCLES}")
    kill_restart_cycles(tmp_path, SEED, CYCLES, UPTIME_S, EARLY_KILL_CHANCE, f"(replay with SEED={SEED})")


def test_sigint_shutdown_is_clean_and_keeps_receipts(tmp_path):
    node = KestrelNode(datadir=tmp_path / "data", log_dir=tmp_path)
    session = requests.Session()
    sender = Account.from_key(DEV_KEYS[5])
    try:
        node.start()
        signed = sender.sign_transaction({
            "type": 2, "chainId": CHAIN_ID, "nonce": 0, "to": sender.address, "value": 1,
            "gas": TRANSFER_GAS, "maxFeePerGas": MAX_FEE_WEI, "maxPriorityFeePerGas": TIP_WEI})
        h = call(session, node.url, "eth_sendRawTransaction", ["0x" + bytes(signed.raw_transaction).hex()])
        deadline = time.monotonic() + 30
        receipt = None
        while receipt is None and time.monotonic() < deadline:
            receipt = call(session, node.url, "eth_getTransactionReceipt", [h])
            time.sleep(0.1)
        assert receipt is not None, "no receipt within 30 s"
        head = int(call(session, node.url, "eth_blockNumber", []), 16)
        block = call(session, node.url, "eth_getBlockByNumber", [hex(head), False])
        assert node.stop(signal.SIGINT) == 0, "SIGINT shutdown did not exit 0"
        node.start()
        assert call(session, node.url, "eth_getTransactionReceipt", [h]) == receipt
        again = call(session, node.url, "eth_getBlockByNumber", [hex(head), False])
        assert (again["hash"], again["stateRoot"]) == (block["hash"], block["stateRoot"])
    finally:
        node.stop()


def test_check_datadir_finds_a_damaged_block_log(tmp_path):
    """`kestrel check-datadir` passes a killed node's datadir and fails one whose block log lost
    a block the database executed: a check that cannot fail would prove nothing after the kills."""
    node = KestrelNode(datadir=tmp_path / "data", log_dir=tmp_path, extra_args=["--block-time-ms", "100"])
    session = requests.Session()
    try:
        node.start()
        deadline = time.monotonic() + 30
        while int(call(session, node.url, "eth_blockNumber", []), 16) < 10:
            assert time.monotonic() < deadline, "no 10 blocks within 30 s"
            time.sleep(0.1)
        node.kill9()
    finally:
        node.stop()
    check = [str(kestrel_bin()), "check-datadir", "--datadir", str(node.datadir)]
    out = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["log_height"] >= report["db_head"] >= 10 and report["commit_proofs"] >= 10, report
    # Flip one byte in the middle of the log (the archive's last segment): the record's checksum
    # fails, so the log ends before it, behind the database.
    log = sorted((node.datadir / "consensus" / "archive").glob("*.seg"))[-1]
    data = bytearray(log.read_bytes())
    data[len(data) // 2] ^= 0xFF
    log.write_bytes(bytes(data))
    out = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "before it was logged" in out.stderr, (out.stdout, out.stderr)


def _metric(node: KestrelNode, name: str) -> list[str]:
    """The exposition lines of metric `name` (with any labels)."""
    text = requests.get(node.metrics_url, timeout=5).text
    return [line for line in text.splitlines() if line.startswith(name + " ") or line.startswith(name + "{")]


@pytest.mark.parametrize("archive_io", ["auto", "pwrite"])
def test_a_torn_archive_tail_is_repaired_at_restart(tmp_path, archive_io):
    """A crash mid-append leaves part of a record at the end of the archive's last segment (here
    written by hand after a kill -9: a kill alone rarely tears a write). The restarted node cuts
    it (`kestrel_archive_torn_tail_repairs_total` 1), keeps every block, and goes on finalizing;
    check-datadir sees the torn bytes before the restart and a clean archive after. Run on the
    io_uring path (where the kernel has it) and on the forced fallback, which `kestrel_node_info`
    names."""
    node = KestrelNode(datadir=tmp_path / "data", log_dir=tmp_path,
                       extra_args=["--block-time-ms", "100", "--archive-io", archive_io])
    session = requests.Session()
    check = [str(kestrel_bin()), "check-datadir", "--datadir", str(node.datadir)]
    try:
        node.start()
        [info] = _metric(node, "kestrel_node_info")
        if archive_io == "pwrite":
            assert 'archive_io="pwrite"' in info, info
        else:
            assert 'archive_io="io_uring"' in info or 'archive_io="pwrite"' in info, info
        deadline = time.monotonic() + 30
        while int(call(session, node.url, "eth_blockNumber", []), 16) < 10:
            assert time.monotonic() < deadline, "no 10 blocks within 30 s"
            time.sleep(0.1)
        node.kill9()
        before = json.loads(subprocess.run(check, capture_output=True, text=True, timeout=60,
                                           check=True).stdout)
        segment = sorted((node.datadir / "consensus" / "archive").glob("*.seg"))[-1]
        # A record header promising 4 KiB of payload, and 100 bytes of it.
        torn = (0xDEADBEEF).to_bytes(4, "little") + (4096).to_bytes(4, "little") + bytes([1, 1, 0, 0])
        torn += (before["log_height"] + 1).to_bytes(8, "little") + bytes(range(100))
        with open(segment, "ab") as f:
            f.write(torn)
        seen = json.loads(subprocess.run(check, capture_output=True, text=True, timeout=60,
                                         check=True).stdout)
        assert seen["torn_tail_bytes"] == len(torn) and seen["log_height"] == before["log_height"], seen
        node.start()
        # The consensus block log's archive was repaired; the store's (bodies, receipts) was whole.
        assert set(_metric(node, "kestrel_archive_torn_tail_repairs_total")) == {
            'kestrel_archive_torn_tail_repairs_total{archive="consensus"} 1',
            'kestrel_archive_torn_tail_repairs_total{archive="blocks"} 0'}
        assert set(_metric(node, "kestrel_archive_torn_tail_bytes_total")) == {
            f'kestrel_archive_torn_tail_bytes_total{{archive="consensus"}} {len(torn)}',
            'kestrel_archive_torn_tail_bytes_total{archive="blocks"} 0'}
        deadline = time.monotonic() + 30
        while int(call(session, node.url, "eth_blockNumber", []), 16) < before["log_height"] + 5:
            assert time.monotonic() < deadline, "no new blocks after the repair"
            time.sleep(0.1)
        assert "truncated a torn tail of the block archive" in node.log_tail(400)
        node.stop()
        after = json.loads(subprocess.run(check, capture_output=True, text=True, timeout=60,
                                          check=True).stdout)
        assert after["torn_tail_bytes"] == 0 and after["log_height"] >= before["log_height"] + 5, after
    finally:
        node.stop()
