"""Kestrel's commit-state subscription, `eth_subscribe("kestrelNewHeads")`, on a dev node (a
one-validator BFT chain): every block is reported proposed, voted, finalized and verified, in that
order, and the verified notification names the block RPC serves (hash and state root). A block's
result is carried by the block D = 3 heights later, so it is verified once that one is final."""

from __future__ import annotations

import asyncio
import json

import pytest
import requests
import websockets

from kestrel_node import KestrelNode, free_port

BLOCKS = 8
TIMEOUT_S = 30.0
STATES = ["Proposed", "Voted", "Finalized", "Verified"]


@pytest.fixture
def ws_node(tmp_path):
    port = free_port()
    node = KestrelNode(datadir=tmp_path / "data", log_dir=tmp_path,
                       extra_args=["--ws-port", str(port), "--block-time-ms", "200"])
    node.start()
    node.ws_url = f"ws://127.0.0.1:{port}"
    yield node
    node.stop()


async def collect(url: str) -> dict[int, list[dict]]:
    """Notifications by block number until BLOCKS consecutive blocks have reached `Verified`."""
    steps: dict[int, list[dict]] = {}
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe",
                                  "params": ["kestrelNewHeads"]}))
        answer = json.loads(await ws.recv())
        assert "result" in answer, answer
        first = None
        async def run():
            nonlocal first
            while True:
                message = json.loads(await ws.recv())
                step = message["params"]["result"]
                number = int(step["blockNumber"], 16)
                steps.setdefault(number, []).append(step)
                if step["commitState"] == "Proposed" and first is None:
                    first = number
                if first is not None and all(
                        any(s["commitState"] == "Verified" for s in steps.get(n, []))
                        for n in range(first, first + BLOCKS)):
                    return
        await asyncio.wait_for(run(), TIMEOUT_S)
        return {n: s for n, s in steps.items() if first <= n < first + BLOCKS}


def rpc(url: str, method: str, params: list):
    answer = requests.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
                           timeout=10).json()
    assert "result" in answer, answer
    return answer["result"]


def test_each_block_is_proposed_voted_finalized_then_verified(ws_node):
    steps = asyncio.run(collect(ws_node.ws_url))
    assert len(steps) == BLOCKS
    for number, got in steps.items():
        states = [s["commitState"] for s in got]
        assert states == STATES, f"block {number}: {states}"
        proposed, voted, finalized, verified = got
        # The three consensus steps name the same block; rounds only grow with heights.
        assert proposed["blockId"] == voted["blockId"] == finalized["blockId"], got
        assert proposed["round"] == finalized["round"] and int(proposed["author"], 16) == 0
        block = rpc(ws_node.url, "eth_getBlockByNumber", [hex(number), False])
        assert verified["hash"] == block["hash"] and verified["stateRoot"] == block["stateRoot"], (
            number, verified, block)
        assert verified["receiptsRoot"] == block["receiptsRoot"]
        assert int(finalized["timestamp"], 16) == int(block["timestamp"], 16)
    ids = [steps[n][0]["blockId"] for n in sorted(steps)]
    parents = [steps[n][0]["parentBlockId"] for n in sorted(steps)]
    assert parents[1:] == ids[:-1], "each block's parent is the block before it"


def test_kestrel_new_heads_takes_no_parameters(ws_node):
    async def run():
        async with websockets.connect(ws_node.ws_url) as ws:
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe",
                                      "params": ["kestrelNewHeads", {"x": 1}]}))
            return json.loads(await ws.recv())
    answer = asyncio.run(run())
    assert answer["error"]["code"] == -32602
    assert "invalid parameters for kestrelNewHeads" in answer["error"]["message"]
