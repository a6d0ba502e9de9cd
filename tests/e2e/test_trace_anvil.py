"""Tracing side by side with anvil 1.7.1: the same signed transactions (two ERC-20 deploys and
transfers, a Uniswap-V2-style swap, a chain of nested calls, a reverting call inside a successful
transaction, a reverted transaction, CREATE2, and a child created and self-destructed in one
transaction) go to a fresh Kestrel dev node and to anvil, one at a time; then
`debug_traceTransaction` with callTracer (with logs), prestateTracer with and without diffMode and
the default opcode logger, `debug_traceCall`, `debug_traceBlockByNumber`, `eth_createAccessList` and
`eth_getLogs` must agree field by field.

What differs because the chains differ, not the tracers, is normalized (see `NORMALIZED`):
- the blocks' coinbase (Kestrel pays its validator's address, anvil the zero address) and the
  sender's balance (each chain's base fee differs, so each charged different fees before);
- block numbers, hashes and log indexes of the block (anvil mines one block per transaction,
  Kestrel at its own pace);
- the pair's packed reserves slot, whose top 32 bits are `block.timestamp`, and the stack of the
  opcode log of the pair's transactions and the storage it shows (timestamps flow through them).

One difference is anvil's own: the callTracer's top frame `gas` is the transaction's gas limit in
geth (`callTracer.OnTxStart`) and in Kestrel, while anvil 1.7.1 reports the gas left after the
intrinsic gas; the test checks Kestrel's against the limit and compares the rest. And the
prestateTracer (without diffMode) of anvil 1.7.1 lists accounts that were empty before the
transaction (a contract it creates, a fresh recipient), which geth omits, as revm-inspectors 0.44
(reth's and Kestrel's) does; the test drops those from anvil's answer.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from e2e_util import raw_rpc, run_anvil, wait_receipt
from kestrel_node import CHAIN_ID, DEV_KEYS, KestrelNode

HERE = Path(__file__).resolve().parent
GAS = 3_000_000
MAX_FEE = 200 * 10**9
TIP = 10**9
# Pair.sol: slot 2 packs reserve0 (112 bits), reserve1 (112 bits) and blockTimestampLast (32).
PAIR_RESERVES_SLOT = "0x" + "00" * 31 + "02"
TIMESTAMP_MASK = (1 << 224) - 1
NORMALIZED = ("coinbase account", "sender balance", "block number/hash, log index",
              "pair reserves slot timestamp bits", "opcode-log stack and storage of pair transactions",
              "callTracer top frame gas (anvil's, not geth's)",
              "accounts empty before the transaction in anvil's prestate (anvil's, not geth's)",
              "eth_createAccessList: list order, and a reverting call's answer (anvil's is an "
              "error, geth's a result with `error`)")
TRACERS = {
    "callTracer": {"tracer": "callTracer", "tracerConfig": {"withLog": True}},
    "prestateTracer": {"tracer": "prestateTracer"},
    "prestateTracer diffMode": {"tracer": "prestateTracer", "tracerConfig": {"diffMode": True}},
    "opcode logger": {},
}


def compile_all(tmp_path: Path, source: str) -> dict:
    out = tmp_path / f"{source}.json"
    subprocess.run([shutil.which("node"), str(HERE / "compile.mjs"), "--contract", source, "--all",
                    "--out", str(out)], check=True, cwd=HERE, timeout=120)
    return json.loads(out.read_text())


@pytest.fixture
def anvil(tmp_path):
    # `--steps-tracing`: without it anvil records no opcode steps (structLogs come back empty).
    yield from run_anvil(tmp_path, "--steps-tracing")


@pytest.fixture
def kestrel(tmp_path):
    node = KestrelNode(datadir=tmp_path / "data", log_dir=tmp_path, extra_args=["--block-time-ms", "200"])
    node.start()
    yield Web3(Web3.HTTPProvider(node.url))
    node.stop()


class Twin:
    """Sends each transaction, signed once, to both nodes and waits for both receipts."""

    def __init__(self, kestrel: Web3, anvil: Web3, key: str):
        self.nodes = (kestrel, anvil)
        self.account = Account.from_key(key)
        self.nonce = kestrel.eth.get_transaction_count(self.account.address)
        assert self.nonce == anvil.eth.get_transaction_count(self.account.address)
        self.sent: list[tuple[str, str]] = []

    def send(self, label: str, to: str | None, data: str = "0x", value: int = 0,
             access_list: list | None = None) -> dict:
        tx = {"chainId": CHAIN_ID, "nonce": self.nonce, "gas": GAS, "maxFeePerGas": MAX_FEE,
              "maxPriorityFeePerGas": TIP, "value": value, "data": data, "type": 2,
              "accessList": access_list or []}
        if to is not None:
            tx["to"] = to
        raw = self.account.sign_transaction(tx).raw_transaction
        self.nonce += 1
        receipts = [wait_receipt(w3, w3.eth.send_raw_transaction(raw)) for w3 in self.nodes]
        k, a = receipts
        assert (k["status"], k["gasUsed"], k["contractAddress"]) == (
            a["status"], a["gasUsed"], a["contractAddress"]), (label, k, a)
        self.sent.append((label, k["transactionHash"].to_0x_hex()))
        return k

    def deploy(self, label: str, artifact: dict, *args) -> str:
        factory = self.nodes[0].eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        data = factory.constructor(*args).data_in_transaction
        return self.send(label, None, data)["contractAddress"]


def strip_chain(value, drop: set[str]):
    """`value` without the accounts in `drop` (lower case) wherever accounts are keys."""
    if isinstance(value, dict):
        return {k: strip_chain(v, drop) for k, v in value.items() if k.lower() not in drop}
    if isinstance(value, list):
        return [strip_chain(v, drop) for v in value]
    return value


def normalize_prestate(trace: dict, sender: str, pair: str, drop: set[str]) -> dict:
    trace = strip_chain(trace, drop)
    frames = [trace.get("pre", {}), trace.get("post", {})] if "pre" in trace else [trace]
    for frame in frames:
        for address, account in frame.items():
            if address.lower() == sender.lower():
                account.pop("balance", None)
            if address.lower() == pair.lower() and PAIR_RESERVES_SLOT in account.get("storage", {}):
                packed = int(account["storage"][PAIR_RESERVES_SLOT], 16) & TIMESTAMP_MASK
                account["storage"][PAIR_RESERVES_SLOT] = hex(packed)
    return trace


def empty_before(account: dict) -> bool:
    return int(account.get("balance", "0x0"), 16) == 0 and not account.get("nonce") \
        and not account.get("code")


def drop_empty_accounts(anvil_prestate: dict, kestrel_prestate: dict) -> dict:
    """anvil's non-diff prestate without the accounts empty before the transaction, which
    geth and Kestrel leave out (only those: an account Kestrel lists stays)."""
    return {address: account for address, account in anvil_prestate.items()
            if address in kestrel_prestate or not empty_before(account)}


def normalize_logs(logs: list) -> list:
    return [{k: v for k, v in log.items() if k not in ("blockNumber", "blockHash", "logIndex",
                                                      "blockTimestamp", "transactionIndex")}
            for log in logs]


def trace(w3: Web3, method: str, params: list):
    answer = raw_rpc(w3.provider.endpoint_uri, method, params)
    assert "result" in answer, (method, params, answer)
    return answer["result"]


def test_traces_match_anvil(kestrel, anvil, tmp_path):
    tokens = compile_all(tmp_path, "Pair")
    token_abi = compile_all(tmp_path, "Token")["Token"]
    tracing = compile_all(tmp_path, "Tracing")
    twin = Twin(kestrel, anvil, DEV_KEYS[5])
    me = twin.account.address
    sink = Web3.to_checksum_address("0x" + "5e" * 20)

    token_a = twin.deploy("deploy token A", token_abi, "A", "A", 10**24)
    token_b = twin.deploy("deploy token B", token_abi, "B", "B", 10**24)
    pair = twin.deploy("deploy pair", tokens["Pair"], token_a, token_b)
    erc20 = kestrel.eth.contract(abi=token_abi["abi"])
    pair_c = kestrel.eth.contract(abi=tokens["Pair"]["abi"])
    for token in (token_a, token_b):
        twin.send("seed pair", token, erc20.encode_abi("transfer", [pair, 10**21]))
    twin.send("sync", pair, pair_c.encode_abi("sync", []))
    twin.send("approve", token_a, erc20.encode_abi("approve", [pair, 2**256 - 1]))
    twin.send("swap", pair, pair_c.encode_abi("swap", [10**18, True, me]))
    twin.send("erc20 transfer", token_b, erc20.encode_abi("transfer", [sink, 12345]))

    relays = [twin.deploy(f"deploy relay {i}", tracing["Relay"]) for i in range(3)]
    relay_c = kestrel.eth.contract(abi=tracing["Relay"]["abi"])
    relay_call = relay_c.encode_abi("relay", [relays[1:], 1])
    twin.send("nested calls", relays[0], relay_call)
    thrower = twin.deploy("deploy thrower", tracing["Thrower"])
    catcher = twin.deploy("deploy catcher", tracing["Catcher"])
    catcher_call = kestrel.eth.contract(abi=tracing["Catcher"]["abi"]).encode_abi(
        "tryBoom", [thrower, 42])
    twin.send("caught revert", catcher, catcher_call)
    twin.send("reverted tx", thrower,
              kestrel.eth.contract(abi=tracing["Thrower"]["abi"]).encode_abi("boom", [99]))
    factory = twin.deploy("deploy factory", tracing["Factory"])
    factory_c = kestrel.eth.contract(abi=tracing["Factory"]["abi"])
    twin.send("create2", factory, factory_c.encode_abi("deploy", [b"\x01" * 32, 7]), value=5)
    twin.send("create+selfdestruct", factory,
              factory_c.encode_abi("deployAndDestroy", [b"\x02" * 32, sink]), value=9)

    compared = 0
    for label, tx_hash in twin.sent:
        blocks = [w3.eth.get_transaction(tx_hash)["blockNumber"] for w3 in (kestrel, anvil)]
        drop = {w3.eth.get_block(b)["miner"].lower() for w3, b in zip((kestrel, anvil), blocks)}
        for name, opts in TRACERS.items():
            got, want = (trace(w3, "debug_traceTransaction", [tx_hash, opts]) for w3 in (kestrel, anvil))
            if name.startswith("prestate"):
                got, want = (normalize_prestate(t, me, pair, drop) for t in (got, want))
            if name == "prestateTracer":
                want = drop_empty_accounts(want, got)
            if name == "callTracer":
                assert got["gas"] == hex(GAS), (label, got["gas"])
                got.pop("gas")
                want.pop("gas")
            if name == "opcode logger":
                assert len(got["structLogs"]) == len(want["structLogs"]), label
                if "pair" in label or label in ("sync", "swap"):
                    for t in (got, want):
                        for step in t["structLogs"]:
                            step.pop("stack", None)
                            step.pop("storage", None)
                diff = next((i for i, (g, w) in enumerate(zip(got["structLogs"], want["structLogs"]))
                             if g != w), None)
                assert diff is None, (label, diff, got["structLogs"][diff], want["structLogs"][diff])
            assert got == want, f"{label}: {name}\nkestrel: {got}\nanvil:   {want}"
            compared += 1
        logs = [normalize_logs(trace(w3, "eth_getLogs", [{"fromBlock": hex(b), "toBlock": hex(b)}]))
                for w3, b in zip((kestrel, anvil), blocks)]
        mine = [[log for log in side if log["transactionHash"] == tx_hash] for side in logs]
        assert mine[0] == mine[1], label
    assert compared == len(twin.sent) * len(TRACERS)

    # A block traced whole: every transaction's callTracer frame, in order.
    label, tx_hash = next(s for s in twin.sent if s[0] == "nested calls")
    by_block = []
    for w3 in (kestrel, anvil):
        number = w3.eth.get_transaction(tx_hash)["blockNumber"]
        results = trace(w3, "debug_traceBlockByNumber", [hex(number), TRACERS["callTracer"]])
        frames = [r["result"] for r in results if r.get("txHash") == tx_hash]
        assert [frame.pop("gas") for frame in frames] == [hex(GAS)] or w3 is anvil
        by_block.append(frames)
    assert by_block[0] == by_block[1] and len(by_block[0]) == 1

    # Calls traced at the head, on state both chains agree on.
    heads = {w3.eth.get_block("latest")["miner"].lower() for w3 in (kestrel, anvil)}
    for to, data in ((relays[0], relay_call), (catcher, catcher_call)):
        request = {"from": me, "to": to, "data": data, "gas": hex(GAS)}
        for opts in (TRACERS["callTracer"], TRACERS["prestateTracer"]):
            got, want = (trace(w3, "debug_traceCall", [request, "latest", opts])
                         for w3 in (kestrel, anvil))
            if opts["tracer"] == "callTracer":
                assert got.pop("gas") == hex(GAS)
                want.pop("gas")
            if opts["tracer"] == "prestateTracer":
                got, want = (normalize_prestate(t, me, pair, heads) for t in (got, want))
                want = drop_empty_accounts(want, got)
            assert got == want, f"debug_traceCall {opts}\nkestrel: {got}\nanvil:   {want}"

    # Access lists of calls on state both chains agree on: the relay chain (three contracts and
    # their counters), the caught revert, the swap's token reads, and a reverting call. The lists
    # must be the same (as sets: anvil lists them in no particular order), and so must `gasUsed`:
    # the gas the call then uses with its list, which a transaction sent with that list shows in
    # its receipt.
    swap_call = pair_c.encode_abi("swap", [10**15, True, me])
    boom = kestrel.eth.contract(abi=tracing["Thrower"]["abi"]).encode_abi("boom", [99])
    calls = [(relays[0], relay_call), (catcher, catcher_call), (pair, swap_call), (thrower, boom)]
    lists = []
    for to, data in calls:
        request = {"from": me, "to": to, "data": data}
        got = trace(kestrel, "eth_createAccessList", [request, "latest"])
        want = raw_rpc(anvil.provider.endpoint_uri, "eth_createAccessList", [request, "latest"])
        lists.append(got)
        if "error" in want:
            # anvil answers a reverting call with the revert as an error, geth and Kestrel with
            # the list and the revert message beside it.
            assert got["error"] == want["error"]["message"], (to, got, want)
            continue
        want = want["result"]
        by_address = [sorted(side["accessList"], key=lambda item: item["address"]) for side in (got, want)]
        assert by_address[0] == by_address[1], f"access list to {to}\nkestrel: {got}\nanvil:   {want}"
        assert (got["gasUsed"], got.get("error")) == (want["gasUsed"], want.get("error")), (to, got, want)
    for (to, data), got in zip(calls, lists):
        receipt = twin.send(f"call to {to} with its access list", to, data,
                            access_list=got["accessList"])
        assert int(got["gasUsed"], 16) == receipt["gasUsed"], (to, got, receipt["gasUsed"])
