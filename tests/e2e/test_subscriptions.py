"""WebSocket subscriptions (`--ws-port`) with web3.py's `AsyncWeb3` and `WebSocketProvider`:
every new head and every matching event arrives exactly once and in order, pending transaction
hashes arrive, a bad subscription gets a clear error, and a subscriber that stops reading has its
subscription closed with the reason while another on the same node keeps receiving."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import requests
import websockets
from eth_account import Account
from web3 import AsyncWeb3, Web3
from web3.providers.persistent import WebSocketProvider

from e2e_util import deploy_token, fees, wait_receipt
from kestrel_node import CHAIN_ID, DEV_KEYS, KestrelNode, free_port

HEADS = 6
TIMEOUT_S = 30.0


@pytest.fixture
def ws_node(tmp_path):
    port = free_port()
    node = KestrelNode(datadir=tmp_path / "data", log_dir=tmp_path,
                       extra_args=["--ws-port", str(port), "--block-time-ms", "200",
                                   "--ws-buffer-messages", "16"])
    node.start()
    node.ws_url = f"ws://127.0.0.1:{port}"
    yield node
    node.stop()


async def take(subscription_stream, count: int) -> list:
    out = []
    async def run():
        async for item in subscription_stream:
            out.append(item)
            if len(out) == count:
                return
    await asyncio.wait_for(run(), TIMEOUT_S)
    return out


def test_new_heads_arrive_once_in_order(ws_node):
    async def run():
        async with AsyncWeb3(WebSocketProvider(ws_node.ws_url)) as w3:
            sub = await w3.eth.subscribe("newHeads")
            heads = []
            async def collect():
                async for msg in w3.socket.process_subscriptions():
                    assert msg["subscription"] == sub
                    heads.append(msg["result"])
                    if len(heads) == HEADS:
                        return
            await asyncio.wait_for(collect(), TIMEOUT_S)
            assert await w3.eth.unsubscribe(sub)
            return heads, w3
    heads, _ = asyncio.run(run())
    numbers = [h["number"] for h in heads]
    assert numbers == list(range(numbers[0], numbers[0] + HEADS)), numbers
    w3 = Web3(Web3.HTTPProvider(ws_node.url))
    for h in heads:
        block = w3.eth.get_block(h["number"])
        assert block["hash"] == h["hash"] and block["stateRoot"] == h["stateRoot"]
        assert block["parentHash"] == h["parentHash"]


def test_pending_transaction_hashes_arrive(ws_node):
    sender = Account.from_key(DEV_KEYS[6])
    http = Web3(Web3.HTTPProvider(ws_node.url))
    sent = []

    async def run():
        async with AsyncWeb3(WebSocketProvider(ws_node.ws_url)) as w3:
            pending = await w3.eth.subscribe("newPendingTransactions")
            # Any address: a transfer to a contract-less account logs nothing, so the logs
            # subscription sees only what the token emits below.
            heads = await w3.eth.subscribe("newHeads")
            nonce = http.eth.get_transaction_count(sender.address, "pending")
            for i in range(3):
                raw = sender.sign_transaction({
                    "type": 2, "chainId": CHAIN_ID, "nonce": nonce + i, "to": sender.address,
                    "value": 1, "gas": 21_000, **fees(http)}).raw_transaction
                sent.append(http.eth.send_raw_transaction(raw).to_0x_hex())
            got = []
            async def collect():
                async for msg in w3.socket.process_subscriptions():
                    if msg["subscription"] == pending:
                        got.append(msg["result"].to_0x_hex() if hasattr(msg["result"], "to_0x_hex")
                                   else msg["result"])
                        if set(sent) <= set(got):
                            return
            await asyncio.wait_for(collect(), TIMEOUT_S)
            assert [h for h in got if h in sent] == sent
            await w3.eth.unsubscribe(heads)
    asyncio.run(run())
    for h in sent:
        wait_receipt(http, h)


def test_bad_subscription_gets_a_clear_error(ws_node):
    async def run():
        async with websockets.connect(ws_node.ws_url) as ws:
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe",
                                      "params": ["newBlocks"]}))
            return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
    answer = asyncio.run(run())
    assert answer["error"]["message"] == "unsupported subscription type: newBlocks", answer


def test_a_subscriber_that_stops_reading_is_closed_the_others_are_not(ws_node):
    """`--ws-buffer-messages 16`: a subscriber that reads nothing while many full pending
    transactions are sent fills its buffer and is closed as too slow; one that reads keeps
    every head."""
    http = Web3(Web3.HTTPProvider(ws_node.url))
    senders = [Account.from_key(k) for k in DEV_KEYS[:4]]

    async def run():
        async with websockets.connect(ws_node.ws_url, max_queue=None) as slow, \
                AsyncWeb3(WebSocketProvider(ws_node.ws_url)) as fast:
            await slow.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe",
                                        "params": ["newPendingTransactions", True]}))
            slow_sub = json.loads(await slow.recv())["result"]
            heads = await fast.eth.subscribe("newHeads")
            # The slow client stops reading: its socket and then its buffer fill.
            slow.transport.pause_reading()
            nonces = {s.address: http.eth.get_transaction_count(s.address, "pending") for s in senders}
            fee = fees(http)
            for i in range(300):
                for s in senders:
                    raw = s.sign_transaction({
                        "type": 2, "chainId": CHAIN_ID, "nonce": nonces[s.address] + i,
                        "to": s.address, "value": 1, "gas": 60_000, "data": b"\x00" * 2_000,
                        **fee}).raw_transaction
                    http.eth.send_raw_transaction(raw)
            seen = []
            async def collect():
                async for msg in fast.socket.process_subscriptions():
                    if msg["subscription"] == heads:
                        seen.append(msg["result"]["number"])
                        if len(seen) == 5:
                            return
            await asyncio.wait_for(collect(), TIMEOUT_S)
            assert seen == list(range(seen[0], seen[0] + 5)), seen
            slow.transport.resume_reading()
            # The slow one's messages end with the close of its subscription, with the reason.
            deadline = time.monotonic() + TIMEOUT_S
            while time.monotonic() < deadline:
                msg = json.loads(await asyncio.wait_for(slow.recv(), TIMEOUT_S))
                if "error" in msg.get("params", {}) or msg.get("method") != "eth_subscription":
                    return slow_sub, msg
            raise AssertionError("the slow subscription was never closed")
    slow_sub, closing = asyncio.run(run())
    assert "subscriber too slow" in json.dumps(closing), closing
    metrics = requests.get(ws_node.metrics_url, timeout=5).text
    assert 'kestrel_rpc_subscribers_dropped_total{reason="buffer_full"}' in metrics


def test_logs_subscription_gets_each_matching_event_once(ws_node, token_artifact):
    http = Web3(Web3.HTTPProvider(ws_node.url))
    deployer = Account.from_key(DEV_KEYS[5])
    token = deploy_token(http, deployer, token_artifact, "Sub Token", "SUB", 10**24)
    factory = http.eth.contract(abi=token_artifact["abi"], bytecode=token_artifact["bytecode"])
    transfer_topic = Web3.keccak(text="Transfer(address,address,uint256)").to_0x_hex()
    sent = []

    async def run():
        async with AsyncWeb3(WebSocketProvider(ws_node.ws_url)) as w3:
            sub = await w3.eth.subscribe("logs", {"address": token.address, "topics": [transfer_topic]})
            # Another address's events must not arrive: a second token's mint.
            nonce = http.eth.get_transaction_count(deployer.address)
            other = factory.constructor("Other", "OTH", 1).build_transaction({
                "from": deployer.address, "nonce": nonce, "chainId": CHAIN_ID, **fees(http)})
            http.eth.send_raw_transaction(deployer.sign_transaction(other).raw_transaction)
            for i in range(3):
                t = token.functions.transfer(Web3.to_checksum_address(f"0x{i + 1:040x}"), i + 1) \
                    .build_transaction({"from": deployer.address, "nonce": nonce + 1 + i,
                                        "gas": 100_000, "chainId": CHAIN_ID, **fees(http)})
                sent.append(http.eth.send_raw_transaction(deployer.sign_transaction(t).raw_transaction))
            logs = []
            async def collect():
                async for msg in w3.socket.process_subscriptions():
                    assert msg["subscription"] == sub
                    logs.append(msg["result"])
                    if len(logs) == 3:
                        return
            await asyncio.wait_for(collect(), TIMEOUT_S)
            # Nothing more arrives for these three blocks' worth of waiting.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(collect(), 1.0)
            return logs
    logs = asyncio.run(run())
    assert [log["transactionHash"] for log in logs] == sent
    assert all(log["address"] == token.address for log in logs)
    assert [int.from_bytes(log["data"], "big") for log in logs] == [1, 2, 3]
