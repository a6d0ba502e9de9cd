"""A full node follows four validators, and a hostile one changes nothing.

Real `kestrel` processes on loopback: `init-testnet --validators 4 --full-nodes 1`, the full node
started from its `role = "full"` config. In order, on one testnet:

- the full node follows the chain: transactions sent to *its* RPC are forwarded, included, and
  their receipts served by it; its blocks (hash, state root, receipts root) equal every
  validator's; the validators count it as a full node, not a validator peer;
- a hostile full node (a raw socket that completes the handshake with a fresh key) sends a
  consensus message, a sync response, a frame over the full nodes' cap, or floods sync requests:
  each time the validator closes its connection, counts why, and no message of it reaches the
  consensus decoder; the chain keeps finalizing, the validators and the honest full node agree.

The consensus frames carry arbitrary bytes rather than real votes or proposals: a full node has
no validator key, so it could not sign a valid one, and the transport refuses the kind before
anything is decoded, which is what the test checks.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
from eth_hash.auto import keccak
from eth_keys import keys

from testnet import (Sender, Testnet, assert_agree, documented_metrics, exported_metrics, series,
                     wait_until)

pytestmark = pytest.mark.timeout(300)

BLOCK_TIME_MS = 200
TIMEOUT_S = 30.0
TXS = 40
RECIPIENT = "0x000000000000000000000000000000000000bEEF"
CHAIN_ID = 1337
# The wire format (docs/NETWORK.md).
PROTOCOL_VERSION = 1
CONSENSUS, SYNC_REQUEST, SYNC_RESPONSE = 0x01, 0x03, 0x04
HELLO, AUTH = 0xF0, 0xF1
DOMAIN = b"kestrel-net/handshake/v1"
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
# The full nodes' frame cap and sync request rate (kestrel_net defaults).
FULL_NODE_FRAME_MAX_BYTES = 4 * 1024 * 1024
FULL_NODE_REQUESTS_PER_S = 50


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    # One slot more than the honest full node needs, for the hostile one.
    t = Testnet(tmp_path_factory.mktemp("testnet-full"), 4,
                ["--block-time-ms", str(BLOCK_TIME_MS), "--p2p-full-nodes-max", "2"], full_nodes=1)
    try:
        t.start_all()
        yield t
    finally:
        codes = t.stop_all()
        print(f"\nnodes stopped, exit codes {codes}; logs under {t.root}")


def test_a_full_node_follows_and_forwards_what_it_is_sent(net):
    full = net.full_nodes[0]
    wait_until(lambda: full.head() >= 3, TIMEOUT_S, "the full node's first blocks")
    sender = Sender(1)
    hashes = [full.call("eth_sendRawTransaction", ["0x" + sender.transfer(RECIPIENT, 1).hex()])
              for _ in range(TXS)]
    def all_receipts():
        receipts = [full.receipt(h) for h in hashes]
        return receipts if all(receipts) else None

    receipts = wait_until(all_receipts, TIMEOUT_S, "receipts on the full node")
    assert all(r["status"] == "0x1" for r in receipts)
    top = max(int(r["blockNumber"], 16) for r in receipts)
    assert_agree([*net.validators, full], top)
    for v in net.validators:
        assert v.receipt(hashes[-1])["blockHash"] == receipts[-1]["blockHash"]
    # The whole RPC, from its own state.
    balance = full.call("eth_getBalance", [RECIPIENT, hex(top)])
    assert balance == net[0].call("eth_getBalance", [RECIPIENT, hex(top)])
    assert int(balance, 16) >= TXS
    assert int(full.call("eth_getTransactionCount", [sender.account.address, "latest"]), 16) == TXS

    # Validators see it in its own class: three validator peers and one full node each.
    for v in net.validators:
        assert v.metric("kestrel_net_peers_connected") == 3
        assert v.metric("kestrel_net_full_nodes_connected") == 1
    assert full.metric("kestrel_net_peers_connected") == 4
    # Every metric a full node exports is documented, its own among them.
    undocumented = exported_metrics(full) - documented_metrics()
    assert not undocumented, f"exported but not in docs/metrics.md: {sorted(undocumented)}"
    assert full.metric("kestrel_full_node_lag_seconds") is not None
    # Its execution results were checked against the certified ones the blocks carry, and agree.
    assert full.metric("kestrel_full_node_results_checked_total") > 0
    assert full.metric("kestrel_consensus_execution_result_mismatch_total") == 0


class RawFullNode:
    """A full node played by hand: a fresh key, a real handshake, then whatever frames we like."""

    def __init__(self, addr: tuple[str, int]):
        self.key = keys.PrivateKey(os.urandom(32))
        self.id = self.key.public_key.to_compressed_bytes()
        self.sock = socket.create_connection(addr, timeout=5)
        kind, hello = self.recv()
        assert kind == HELLO
        theirs, their_challenge = hello[8:41], hello[41:73]
        self.send(HELLO, CHAIN_ID.to_bytes(8, "big") + self.id + os.urandom(32))
        digest = keccak(DOMAIN + their_challenge + self.id + theirs + CHAIN_ID.to_bytes(8, "big"))
        sig = self.key.sign_msg_hash(digest)
        s = min(sig.s, SECP256K1_N - sig.s)  # low S, as libsecp256k1 verifies
        self.send(AUTH, sig.r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        kind, _ = self.recv()
        assert kind == AUTH, "the validator refused the full node's handshake"

    def send(self, kind: int, payload: bytes, claimed_len: int | None = None) -> None:
        n = len(payload) if claimed_len is None else claimed_len
        self.sock.sendall(bytes([PROTOCOL_VERSION, kind]) + n.to_bytes(4, "big") + payload)

    def recv(self) -> tuple[int, bytes]:
        header = self._exactly(6)
        return header[1], self._exactly(int.from_bytes(header[2:6], "big"))

    def _exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed")
            out += chunk
        return out

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """Whether the validator closes the connection within `timeout` (it sends us nothing)."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False


def misbehave(node: RawFullNode, how: str) -> None:
    try:
        if how == "vote":
            node.send(CONSENSUS, b"\x00" + os.urandom(200))
        elif how == "proposal":
            node.send(CONSENSUS, b"\x01" + os.urandom(4000))
        elif how == "sync_response":
            node.send(SYNC_RESPONSE, b"\x00\xc0")
        elif how == "oversized":
            # Under the validators' own cap (16 MiB), over the full nodes'.
            node.send(SYNC_REQUEST, b"", claimed_len=FULL_NODE_FRAME_MAX_BYTES + 1)
        elif how == "flood":
            for _ in range(10 * FULL_NODE_REQUESTS_PER_S):
                node.send(SYNC_REQUEST, b"\xff")
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed while we were still sending: what the test wants


def p2p_addr(net, i: int) -> tuple[str, int]:
    genesis = json.loads((net.root / "genesis.json").read_text())
    host, port = genesis["kestrel"]["validators"][i]["p2p"].rsplit(":", 1)
    return host, int(port)


@pytest.mark.parametrize("how, reason", [
    ("vote", "kind_not_allowed"),
    ("proposal", "kind_not_allowed"),
    ("sync_response", "kind_not_allowed"),
    ("oversized", "too_large"),
    ("flood", "rate_limited"),
])
def test_a_hostile_full_node_is_disconnected_and_changes_nothing(net, how, reason):
    v = net[0]
    label = f'{{reason="{reason}",class="full_node"}}'
    errors_before = series(v, "kestrel_net_protocol_errors_total").get(label, 0.0)
    invalid_before = v.metric("kestrel_consensus_invalid_messages_total") or 0.0
    start = v.head()

    hostile = RawFullNode(p2p_addr(net, 0))
    wait_until(lambda: v.metric("kestrel_net_full_nodes_connected") == 2, 10, "the hostile full node in")
    misbehave(hostile, how)
    assert hostile.closed_by_peer(), f"the validator kept a full node that sent a {how}"
    wait_until(lambda: v.metric("kestrel_net_full_nodes_connected") == 1, 10, "the hostile full node out")
    assert series(v, "kestrel_net_protocol_errors_total").get(label, 0.0) == errors_before + 1
    # Nothing it sent reached the consensus decoder...
    assert (v.metric("kestrel_consensus_invalid_messages_total") or 0.0) == invalid_before
    # ...and the chain goes on: every validator and the honest full node agree past it.
    wait_until(lambda: v.head() >= start + 5, TIMEOUT_S, "blocks after the hostile full node")
    assert_agree([*net.validators, *net.full_nodes], start + 5)
    assert all(x.metric("kestrel_net_peers_connected") == 3 for x in net.validators)
