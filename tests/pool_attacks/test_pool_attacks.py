"""Attacks on the pool and ordering against real nodes (issue 19, findings 1 and 4).

Free block space: type-4 transactions with an empty authorization list (8 every 250 ms, 25M gas,
10 gwei tip), and transactions whose sender cannot pay for everything it has in flight (each
affordable alone), while an honest 1-gwei-tip transaction is sent. Neither kind may reach a block:
a proposal's transaction that execution drops still counts toward the next base fee, so every
block's base fee must be what its parent's own transactions imply. The honest transaction is
included within 2 s. On the dev node and on the 4-validator loopback testnet.

Jammed account: nonces 1..4096 fill the sender's allowance behind a gap; nonce 0 is still
admitted (the highest queued nonce makes room) and everything executes. Queued transactions
expire after `--txpool-queued-lifetime-s`.
"""

from __future__ import annotations

import threading
import time

import requests
import rlp
from eth_account import Account
from eth_utils import keccak

from e2e_util import tx_hash_of
from kestrel_node import CHAIN_ID, DEV_KEYS

GWEI = 10**9
ETHER = 10**18
ROUNDS = 12
ROUND_S = 0.25
PER_ROUND = 8
ATTACK_GAS = 25_000_000
ATTACK_TIP = 10 * GWEI
ATTACK_MAX_FEE = 20 * GWEI
HONEST_TIP = 1 * GWEI
HONEST_TXS = 3
HONEST_LATENCY_S = 2.0
# The thin attacker's transactions each move 0.4 ETH with up to 0.5 ETH of gas: its 1 ETH pays
# for any one of them, not two. Ordered together, all but one would be dropped at execution.
THIN_FUNDS = ETHER
THIN_VALUE = 4 * ETHER // 10
INSUFFICIENT_FUNDS = "insufficient funds for gas * price + value"
SINK = "0x000000000000000000000000000000000000dEaD"
HTTP_TIMEOUT_S = 5.0
RECEIPT_TIMEOUT_S = 30.0
SENDER_TXS_MAX = 4096
EMPTY_AUTH_ERROR = "EIP-7702 transaction with empty auth list"


def call(url: str, method: str, params: list):
    out = requests.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
                        timeout=HTTP_TIMEOUT_S).json()
    assert "error" not in out, f"{method}: {out['error']}"
    return out["result"]


def send_all(url: str, raws: list[bytes]) -> list[dict]:
    """eth_sendRawTransaction for each, in one JSON-RPC batch; the answers in order."""
    batch = [{"jsonrpc": "2.0", "id": i, "method": "eth_sendRawTransaction",
              "params": ["0x" + raw.hex()]} for i, raw in enumerate(raws)]
    answers = requests.post(url, json=batch, timeout=60).json()
    return sorted(answers, key=lambda a: a["id"])


def transfer(key: str, nonce: int, tip: int, max_fee: int, gas: int = 21_000, to: str = SINK,
             value: int = 1) -> bytes:
    tx = {"type": 2, "chainId": CHAIN_ID, "nonce": nonce, "gas": gas, "to": to, "value": value,
          "maxFeePerGas": max_fee, "maxPriorityFeePerGas": tip}
    return bytes(Account.from_key(key).sign_transaction(tx).raw_transaction)


def empty_auth(key: str, nonce: int) -> bytes:
    """0x04 || rlp([chain, nonce, tip, maxFee, gas, to, 0, "", [], [], y, r, s]): what wallets
    will not sign, so built by hand."""
    fields = [CHAIN_ID, nonce, ATTACK_TIP, ATTACK_MAX_FEE, ATTACK_GAS, bytes.fromhex(SINK[2:]),
              0, b"", [], []]
    sig = Account.unsafe_sign_hash(keccak(b"\x04" + rlp.encode(fields)), key)
    return b"\x04" + rlp.encode(fields + [sig.v - 27, sig.r, sig.s])


def wait_receipt(url: str, tx_hash: str, timeout: float = RECEIPT_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = call(url, "eth_getTransactionReceipt", [tx_hash])
        if r:
            return r
        time.sleep(0.05)
    raise TimeoutError(f"no receipt for {tx_hash} within {timeout}s")


def next_base_fee(gas_committed: int, gas_limit: int, base_fee: int) -> int:
    """EIP-1559 over the gas a block committed (Kestrel: its transactions' gas limits)."""
    target, used = gas_limit // 2, min(gas_committed, gas_limit)
    if used > target:
        return base_fee + max(1, base_fee * (used - target) // (target * 8))
    return base_fee - base_fee * (target - used) // (target * 8)


def metric_sum(metrics_url: str, series: str) -> float:
    text = requests.get(metrics_url, timeout=HTTP_TIMEOUT_S).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(series))


class Flood(threading.Thread):
    """Every 250 ms: 8 empty-authorization transactions at the same nonces (dropped unpaid, their
    nonces would be free again) and the thin sender's next 8 nonces."""

    def __init__(self, url: str, attacker: str, thin: str):
        super().__init__(daemon=True)
        self.url = url
        self.empty = [empty_auth(attacker, n) for n in range(PER_ROUND)]
        self.thin = [transfer(thin, n, ATTACK_TIP, ATTACK_MAX_FEE, ATTACK_GAS, value=THIN_VALUE)
                     for n in range(ROUNDS * PER_ROUND)]
        self.answers: dict[str, list[dict]] = {"empty": [], "thin": []}
        self.error: BaseException | None = None

    def run(self):
        try:
            for r in range(ROUNDS):
                due = time.monotonic() + ROUND_S
                self.answers["empty"] += send_all(self.url, self.empty)
                self.answers["thin"] += send_all(self.url, self.thin[r * PER_ROUND:(r + 1) * PER_ROUND])
                time.sleep(max(0.0, due - time.monotonic()))
        except BaseException as e:  # noqa: BLE001  (reported by the test)
            self.error = e


def attack(send_url: str, read_url: str, metrics_urls: list[str]) -> list[float]:
    """Runs the flood against `send_url` with honest transactions alongside, checks the chain on
    `read_url`; returns the honest transactions' inclusion latencies."""
    attacker, honest, funder = DEV_KEYS[1], DEV_KEYS[2], DEV_KEYS[0]
    thin = Account.create()
    base = int(call(read_url, "eth_getBlockByNumber", ["latest", False])["baseFeePerGas"], 16)
    fund = transfer(funder, 0, HONEST_TIP, 2 * base + HONEST_TIP, to=thin.address, value=THIN_FUNDS)
    call(send_url, "eth_sendRawTransaction", ["0x" + fund.hex()])
    wait_receipt(read_url, tx_hash_of(fund))
    attacker_nonce = int(call(read_url, "eth_getTransactionCount",
                              [Account.from_key(attacker).address, "latest"]), 16)
    first = int(call(read_url, "eth_blockNumber", []), 16)
    unpayable_before = sum(metric_sum(u, "kestrel_ordering_unpayable_txs_total") for u in metrics_urls)

    flood = Flood(send_url, attacker, thin.key.hex())
    flood.start()
    time.sleep(4 * ROUND_S)
    latencies = []
    for n in range(HONEST_TXS):
        base = int(call(read_url, "eth_getBlockByNumber", ["latest", False])["baseFeePerGas"], 16)
        raw = transfer(honest, n, HONEST_TIP, 2 * base + HONEST_TIP)
        sent = time.monotonic()
        call(send_url, "eth_sendRawTransaction", ["0x" + raw.hex()])
        wait_receipt(read_url, tx_hash_of(raw))
        latencies.append(time.monotonic() - sent)
    flood.join(timeout=60)
    assert not flood.is_alive() and flood.error is None, flood.error

    # Empty authorization lists are refused at the door with geth's error.
    assert len(flood.answers["empty"]) == ROUNDS * PER_ROUND
    for a in flood.answers["empty"]:
        assert EMPTY_AUTH_ERROR in a.get("error", {}).get("message", ""), a
    # Each thin transaction is affordable alone: admitted until the first one executes, then
    # refused at the door.
    assert "result" in flood.answers["thin"][0]
    for a in flood.answers["thin"]:
        assert "result" in a or INSUFFICIENT_FUNDS in a["error"]["message"], a
    time.sleep(1.0)
    last = int(call(read_url, "eth_blockNumber", []), 16)
    assert call(read_url, "eth_getTransactionCount", [Account.from_key(attacker).address, "latest"]) \
        == hex(attacker_nonce)
    # Nothing ordered that execution dropped: each base fee follows from the parent's own
    # transactions. A dropped 25M-gas transaction would show here.
    parent = call(read_url, "eth_getBlockByNumber", [hex(first), True])
    thin_included = 0
    for number in range(first + 1, last + 1):
        block = call(read_url, "eth_getBlockByNumber", [hex(number), True])
        committed = sum(int(t["gas"], 16) for t in parent["transactions"])
        expected = next_base_fee(committed, int(parent["gasLimit"], 16), int(parent["baseFeePerGas"], 16))
        assert int(block["baseFeePerGas"], 16) == expected, (
            f"block {number}: base fee {int(block['baseFeePerGas'], 16)}, its parent's "
            f"transactions ({committed} gas) imply {expected}: something was ordered and dropped")
        thin_included += sum(t["from"].lower() == thin.address.lower() for t in block["transactions"])
        parent = block
    # The thin sender's balance covered one transaction: the reserve balance rule held the
    # others back while it was in flight and dropped them once it had executed.
    unpayable = sum(metric_sum(u, "kestrel_ordering_unpayable_txs_total") for u in metrics_urls)
    assert unpayable > unpayable_before
    assert thin_included == 1
    print(f"honest inclusion latencies {[round(x, 3) for x in latencies]} s; "
          f"thin sender: {thin_included} in blocks {first + 1}..{last}, "
          f"unpayable left out {unpayable - unpayable_before:.0f}")
    return latencies


def test_free_block_space_attacks_on_the_dev_node(start_node):
    node = start_node()
    latencies = attack(node.url, node.url, [node.metrics_url])
    assert max(latencies) < HONEST_LATENCY_S, latencies


def test_free_block_space_attacks_on_the_testnet(testnet):
    latencies = attack(testnet[0].url, testnet[1].url, [v.metrics_url for v in testnet.validators])
    assert max(latencies) < HONEST_LATENCY_S, latencies


def test_the_gap_filling_nonce_is_admitted(start_node):
    node = start_node()
    key = DEV_KEYS[3]
    address = Account.from_key(key).address
    fee = 20 * GWEI
    queued = [transfer(key, n, HONEST_TIP, fee) for n in range(1, SENDER_TXS_MAX + 1)]
    for i in range(0, len(queued), 512):
        for a in send_all(node.url, queued[i:i + 512]):
            assert "result" in a, a
    over = send_all(node.url, [transfer(key, SENDER_TXS_MAX + 1, HONEST_TIP, fee)])[0]
    assert over["error"]["message"] == "account limit exceeded", over
    # The gap filler is admitted: the highest queued nonce made room for it.
    zero = transfer(key, 0, HONEST_TIP, fee)
    assert send_all(node.url, [zero])[0].get("result") == tx_hash_of(zero)
    assert call(node.url, "eth_getTransactionByHash", [tx_hash_of(queued[-1])]) is None
    wait_receipt(node.url, tx_hash_of(zero))
    wait_receipt(node.url, tx_hash_of(queued[-2]))
    assert call(node.url, "eth_getTransactionCount", [address, "latest"]) == hex(SENDER_TXS_MAX)
    assert metric_sum(node.metrics_url, 'kestrel_mempool_rejected_total{reason="sender_limit"}') >= 1
    assert metric_sum(node.metrics_url, 'kestrel_mempool_evicted_total{reason="gap_fill"}') == 1


def test_queued_transactions_expire(start_node):
    lifetime_s = 2
    node = start_node("--txpool-queued-lifetime-s", str(lifetime_s))
    key = DEV_KEYS[4]
    gapped = transfer(key, 5, HONEST_TIP, 20 * GWEI)
    assert "result" in send_all(node.url, [gapped])[0]
    assert call(node.url, "eth_getTransactionByHash", [tx_hash_of(gapped)]) is not None
    deadline = time.monotonic() + lifetime_s + 10
    while call(node.url, "eth_getTransactionByHash", [tx_hash_of(gapped)]) is not None:
        assert time.monotonic() < deadline, "queued transaction never expired"
        time.sleep(0.2)
    assert metric_sum(node.metrics_url, "kestrel_mempool_expired_total") == 1
    # The sender is free again: its next nonce goes in and executes.
    zero = transfer(key, 0, HONEST_TIP, 20 * GWEI)
    assert "result" in send_all(node.url, [zero])[0]
    wait_receipt(node.url, tx_hash_of(zero))
