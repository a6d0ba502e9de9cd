"""A full disk stops the node, and a nearly full one stops taking transactions first.

The node's datadir is on a small tmpfs (needs root to mount; skipped otherwise, saying why):
1. with the disk below `--min-free-disk-mb`, `eth_sendRawTransaction` refuses with a clear error
   and the disk metric shows it, while blocks keep committing;
2. with the check off and the disk full, the first block that needs more disk fails to commit
   and the whole process exits non-zero (70) with a fatal log line: no half-dead node whose RPC
   keeps answering and accepting transactions that are never mined;
3. once space is freed, a restart on the same datadir resumes with every receipt a client saw.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import requests
from eth_account import Account
from web3 import Web3

from e2e_util import fees, send_signed, sign, wait_blocks, wait_receipt
from kestrel_node import CHAIN_ID, DEV_KEYS, KestrelNode, rpc

TMPFS_MB = 64
MIN_FREE_MB = 16
FATAL_EXIT_CODE = 70
EXIT_TIMEOUT_S = 60.0
# Calldata of each filler transaction: large, so that a few need more disk than is left.
FILLER_CALLDATA_BYTES = 100_000

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(mnt)],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a {TMPFS_MB} MiB tmpfs (needs root): {out.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path, leave_bytes: int) -> None:
    """Writes a file into `path`'s filesystem until `leave_bytes` (or nothing) is left."""
    chunk = b"\xff" * (1 << 20)
    with open(path / "filler", "ab") as f:
        while free_bytes(path) > leave_bytes:
            want = min(len(chunk), free_bytes(path) - leave_bytes)
            try:
                f.write(chunk[:max(want, 4096)])
                f.flush()
            except OSError:
                return


def metric(node: KestrelNode, name: str) -> float | None:
    for line in requests.get(node.metrics_url, timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_full_disk_refuses_then_stops_then_restarts(small_disk, tmp_path):
    node = KestrelNode(
        datadir=small_disk / "data", log_dir=tmp_path / "logs",
        extra_args=["--min-free-disk-mb", str(MIN_FREE_MB), "--block-time-ms", "200"],
    )
    node.start()
    w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 10}))
    sender = Account.from_key(DEV_KEYS[1])
    tx = {"to": Account.create().address, "value": 1, "gas": 21_000, "chainId": CHAIN_ID}
    seen = wait_receipt(w3, send_signed(w3, sender, {**tx, "nonce": 0, **fees(w3)}))
    assert seen.status == 1

    # 1. Below the threshold: refused with a clear error; blocks keep committing.
    fill(small_disk, (MIN_FREE_MB // 2) << 20)
    # The disk is read once a second: transactions may be taken until then.
    deadline = time.monotonic() + 10
    nonce = 1
    while True:
        raw = sign(w3, sender, {**tx, "nonce": nonce, **fees(w3)})
        out = rpc(node.url, "eth_sendRawTransaction", ["0x" + raw.hex()])
        if "error" in out:
            break
        assert time.monotonic() < deadline, f"still accepted with a nearly full disk: {out}"
        nonce += 1
        time.sleep(0.5)
    assert "low on disk space" in out["error"]["message"], out
    assert metric(node, "kestrel_storage_disk_free_bytes") < MIN_FREE_MB << 20
    wait_blocks(w3, 3)
    assert node.stop() == 0, "a clean stop is still clean"

    # 2. The check off and the disk full: the commit that cannot be written stops the node.
    node.extra_args = ["--min-free-disk-mb", "0", "--block-time-ms", "200"]
    node.start()
    w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 10}))
    fill(small_disk, 0)
    nonce = w3.eth.get_transaction_count(sender.address)
    fee = fees(w3)  # read once: the loop runs until the node goes away
    sent = 0
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    while node.running():
        assert time.monotonic() < deadline, "the node went on running with a full disk"
        big = {
            "to": Account.create().address, "value": 0, "gas": 3_000_000, "chainId": CHAIN_ID,
            "data": b"\x01" * FILLER_CALLDATA_BYTES, "nonce": nonce + sent, **fee,
        }
        try:
            out = rpc(node.url, "eth_sendRawTransaction", ["0x" + sign(w3, sender, big).hex()])
            if "result" in out:
                sent += 1
        except requests.RequestException:  # the node is going down
            pass
        time.sleep(0.05)
    code = node.proc.returncode
    node.stop()
    assert code == FATAL_EXIT_CODE, f"exit code {code}, not the fatal error's {FATAL_EXIT_CODE}"
    log = node.log_path.read_text(errors="replace")
    assert "fatal error: stopping the node" in log, node.log_tail()

    # 3. Space freed: the restart resumes with what a client saw.
    os.remove(small_disk / "filler")
    node.extra_args = []
    node.start()
    w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 10}))
    again = w3.eth.get_transaction_receipt(seen.transactionHash)
    assert again.blockHash == seen.blockHash and again.status == 1
    head = w3.eth.block_number
    wait_blocks(w3, 2)
    assert w3.eth.block_number > head, "the restarted node makes blocks again"
    node.stop()
