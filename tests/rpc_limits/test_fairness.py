"""Finding 6 of issue 19: one batch of 1,000 looping `eth_call`s held all four execution slots for
24.5 s, and another client's `eth_estimateGas` waited 22.5 s.

Now one IP address holds at most `--rpc-executions-per-ip` slots, each call stops at its time
limit (geth's `execution aborted (timeout = …)`), and the calls of one request share an execution
budget, past which they answer `request timed out`."""

from __future__ import annotations

import threading
import time
from collections import Counter

from web3 import Web3

from e2e_util import send_signed, wait_receipt
from kestrel_node import DEV_ADDRESSES, DEV_KEYS
from limits_util import ATTACKER_IP, call, metric, post, timed_calls

# Runtime `JUMPDEST PUSH1 0 JUMP`, an endless loop, returned by this initcode.
LOOPER_INITCODE = "0x635b6000566000526004601cf3"
CALL_TIMEOUT_MS = 1000
BATCH_TIMEOUT_MS = 6000
BATCH_LEN = 1000
ESTIMATE_MAX_S = 1.0


def deploy_looper(node) -> str:
    from eth_account import Account

    w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 10}))
    tx_hash = send_signed(w3, Account.from_key(DEV_KEYS[0]), {"data": LOOPER_INITCODE, "gas": 100_000})
    receipt = wait_receipt(w3, tx_hash)
    assert receipt["status"] == 1
    assert w3.eth.get_code(receipt["contractAddress"]).hex().removeprefix("0x") == "5b600056"
    return receipt["contractAddress"]


def test_a_batch_of_looping_calls_leaves_slots_to_others(start_node):
    node = start_node(
        "--rpc-call-timeout-ms", str(CALL_TIMEOUT_MS),
        "--rpc-batch-timeout-ms", str(BATCH_TIMEOUT_MS),
    )
    looper = deploy_looper(node)
    loop = {"from": DEV_ADDRESSES[3], "to": looper, "gas": hex(50_000_000)}
    batch = [call("eth_call", [loop, "latest"], i) for i in range(BATCH_LEN)]
    attack: dict = {}

    def send_batch():
        started = time.monotonic()
        attack["answer"] = post(node, batch, source=ATTACKER_IP, timeout=60)
        attack["seconds"] = time.monotonic() - started

    attacker = threading.Thread(target=send_batch)
    attacker.start()
    try:
        time.sleep(0.5)  # the batch holds its slots, the rest of it waits for them
        transfer = {"from": DEV_ADDRESSES[1], "to": DEV_ADDRESSES[2], "value": "0x1"}
        latencies = timed_calls(node, "eth_estimateGas", [transfer], 10, pause_s=0.1)
        assert attacker.is_alive(), "the estimates must run while the batch does"
    finally:
        attacker.join(60)
    print(f"\neth_estimateGas during a batch of {BATCH_LEN} looping eth_calls: "
          f"max {max(latencies) * 1000:.0f} ms; the batch took {attack['seconds']:.1f}s")
    assert max(latencies) < ESTIMATE_MAX_S

    status, answers = attack["answer"]
    assert status == 200
    outcomes = Counter(a["error"]["message"] for a in answers)
    print(f"batch answers: {dict(outcomes)}")
    # A call runs out of gas, or out of time: its own, or (the batch's last) what was left of the
    # batch's budget.
    assert all(o in ("out of gas", "request timed out") or o.startswith("execution aborted (timeout = ")
               for o in outcomes), outcomes
    # The batch used its budget, then the rest of it was refused without running.
    assert outcomes["request timed out"] > BATCH_LEN / 2, outcomes
    assert all(a["error"]["code"] == -32002 for a in answers if a["error"]["message"] == "request timed out")
    assert attack["seconds"] < BATCH_TIMEOUT_MS / 1000 + 2 * CALL_TIMEOUT_MS / 1000 + 2
    assert metric(node, "kestrel_rpc_rejected_total", reason="batch_timeout") == outcomes["request timed out"]


def test_a_call_past_its_time_is_aborted_with_geths_error(start_node):
    # 50M gas of the loop take about 80 ms.
    node = start_node("--rpc-call-timeout-ms", "20")
    looper = deploy_looper(node)
    started = time.monotonic()
    status, out = post(node, call("eth_call", [{"to": looper, "gas": hex(50_000_000)}, "latest"]))
    took = time.monotonic() - started
    assert status == 200
    assert out["error"] == {"code": -32000, "message": "execution aborted (timeout = 20ms)"}, out
    assert took < 1.0, took
    assert metric(node, "kestrel_rpc_rejected_total", reason="call_timeout") == 1
