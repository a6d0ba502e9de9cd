"""End-to-end tests of a `kestrel node --dev` through web3.py and raw JSON-RPC over HTTP.

One node serves the whole session (see conftest.py). Dev accounts used as senders:
0 deploys the token, 1-3 send the plain transfers, 7 sends the reverted transaction,
9 funds fresh accounts; everything else uses a fresh funded account of its own.
"""

from __future__ import annotations

import pytest
import requests
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_utils import keccak, to_checksum_address
from web3.exceptions import ContractLogicError

from e2e_util import (
    account_state,
    fees,
    raw_rpc,
    send_signed,
    sign,
    tx_hash_of,
    wait_blocks,
    wait_receipt,
)
from kestrel_node import CHAIN_ID, DEV_ADDRESSES, DEV_BALANCE_WEI

GWEI = 10**9
ETHER = 10**18
GAS_LIMIT_DEFAULT = 200_000_000
INITIAL_BASE_FEE_WEI = GWEI
TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
APPROVAL_TOPIC = "0x" + keccak(text="Approval(address,address,uint256)").hex()
ERROR_STRING_SELECTOR = "0x08c379a0"  # Error(string)
TOKEN_SUPPLY = 1_000_000 * ETHER
# Storage layout of contracts/Token.sol: name 0, symbol 1, totalSupply 2, balanceOf 3, allowance 4.
TOTAL_SUPPLY_SLOT = 2
BALANCE_OF_SLOT = 3


def topic_of(address: str) -> str:
    return "0x" + "00" * 12 + address[2:].lower()


def hx(value) -> str:
    """HexBytes / bytes / str -> lowercase 0x-hex string."""
    if isinstance(value, str):
        return value.lower()
    return "0x" + bytes(value).hex()


# ---------------------------------------------------------------------------------------------
# Chain basics


def test_chain_id_and_net_version(w3, node):
    assert w3.eth.chain_id == CHAIN_ID
    assert raw_rpc(node.url, "eth_chainId")["result"] == "0x539"
    assert w3.net.version == "1337"
    version = raw_rpc(node.url, "web3_clientVersion")["result"]
    assert isinstance(version, str) and version


def test_dev_accounts_are_funded_and_node_holds_no_keys(w3, node):
    # Runs before any test spends from a dev account (pytest keeps file order).
    for address in DEV_ADDRESSES:
        assert w3.eth.get_balance(address) == DEV_BALANCE_WEI, address
        assert w3.eth.get_transaction_count(address) == 0, address
    assert raw_rpc(node.url, "eth_accounts")["result"] == []
    assert raw_rpc(node.url, "eth_syncing")["result"] is False


def test_blocks_are_produced_and_linked(w3):
    start = w3.eth.block_number
    head = wait_blocks(w3, 4, timeout=10)  # 500 ms blocks: 4 blocks well within 10 s
    assert head >= start + 4
    blocks = [w3.eth.get_block(n) for n in range(start, head + 1)]
    for parent, child in zip(blocks, blocks[1:]):
        assert child["number"] == parent["number"] + 1
        assert child["parentHash"] == parent["hash"]
        assert child["timestamp"] >= parent["timestamp"]
    for b in blocks:
        assert w3.eth.get_block(b["hash"])["number"] == b["number"]
        assert b["gasLimit"] == GAS_LIMIT_DEFAULT


def test_genesis_base_fee_and_eip1559_rule(w3):
    genesis = w3.eth.get_block(0)
    assert genesis["number"] == 0
    assert genesis["baseFeePerGas"] == INITIAL_BASE_FEE_WEI
    head = w3.eth.block_number
    first = max(1, head - 10)
    parent = w3.eth.get_block(first - 1)
    for n in range(first, head + 1):
        block = w3.eth.get_block(n)
        assert block["baseFeePerGas"] == next_base_fee(parent), f"block {n}"
        parent = block


def next_base_fee(parent) -> int:
    """EIP-1559: elasticity 2, change denominator 8."""
    base, used, target = parent["baseFeePerGas"], parent["gasUsed"], parent["gasLimit"] // 2
    if used == target:
        return base
    if used > target:
        return base + max(base * (used - target) // target // 8, 1)
    return base - base * (target - used) // target // 8


def test_fee_rpcs(w3, node):
    base = w3.eth.get_block("latest")["baseFeePerGas"]
    assert w3.eth.gas_price >= base
    assert w3.eth.max_priority_fee >= 0
    hist = w3.eth.fee_history(4, "latest", [25, 75])
    assert len(hist["baseFeePerGas"]) == 5  # blockCount + 1 (the next block's)
    assert len(hist["gasUsedRatio"]) == 4
    assert len(hist["reward"]) == 4 and all(len(r) == 2 for r in hist["reward"])
    assert hist["oldestBlock"] <= w3.eth.block_number


def test_unknown_things_are_null(w3, node):
    missing = "0x" + "ab" * 32
    assert raw_rpc(node.url, "eth_getTransactionReceipt", [missing]) == {
        "jsonrpc": "2.0", "id": 1, "result": None}
    assert raw_rpc(node.url, "eth_getTransactionByHash", [missing])["result"] is None
    assert raw_rpc(node.url, "eth_getBlockByHash", [missing, False])["result"] is None
    assert raw_rpc(node.url, "eth_getBlockByNumber", [hex(10**9), False])["result"] is None
    eoa = DEV_ADDRESSES[5]
    assert raw_rpc(node.url, "eth_getCode", [eoa, "latest"])["result"] == "0x"
    assert raw_rpc(node.url, "eth_getStorageAt", [eoa, "0x0", "latest"])["result"] == "0x" + "00" * 32


def test_metrics_endpoint(node, w3):
    wait_blocks(w3, 1)
    resp = requests.get(node.metrics_url, timeout=5)
    assert resp.status_code == 200
    assert "kestrel_" in resp.text


# ---------------------------------------------------------------------------------------------
# ETH transfers: one per transaction type, exact balances and nonces


@pytest.mark.parametrize(
    "tx_type,sender_idx,recipient_idx",
    [(0, 1, 4), (1, 2, 5), (2, 3, 6)],
    ids=["legacy-eip155", "eip2930", "eip1559"],
)
def test_eth_transfer(w3, dev_accounts, tx_type, sender_idx, recipient_idx):
    sender = dev_accounts[sender_idx]
    recipient = DEV_ADDRESSES[recipient_idx]
    value = 123_456_789 * GWEI + tx_type  # odd amounts catch rounding
    bal_s0 = w3.eth.get_balance(sender.address)
    bal_r0 = w3.eth.get_balance(recipient)
    coinbase = w3.eth.get_block("latest")["miner"]
    bal_c0 = w3.eth.get_balance(coinbase)
    nonce0 = w3.eth.get_transaction_count(sender.address)

    tx = {"to": recipient, "value": value, "nonce": nonce0, "chainId": CHAIN_ID}
    expected_gas = 21_000
    if tx_type == 0:
        gas_price = w3.eth.gas_price
        tx.update(gasPrice=gas_price, gas=21_000)
    elif tx_type == 1:
        gas_price = max(w3.eth.gas_price, 2 * w3.eth.get_block("latest")["baseFeePerGas"])
        tx.update(type=1, gasPrice=gas_price, gas=30_000,
                  accessList=[{"address": recipient, "storageKeys": []}])
        expected_gas = 21_000 + 2_400  # one access-list address
    else:
        tx.update(type=2, gas=21_000, **fees(w3))
    raw = sign(w3, sender, tx)
    tx_hash = w3.eth.send_raw_transaction(raw)
    assert hx(tx_hash) == tx_hash_of(raw)
    r = wait_receipt(w3, tx_hash)

    assert r["status"] == 1
    assert r["type"] == tx_type
    assert r["gasUsed"] == expected_gas
    assert r["cumulativeGasUsed"] >= r["gasUsed"]
    assert r["from"] == sender.address
    assert r["to"] == recipient
    assert r["contractAddress"] is None
    assert r["logs"] == []
    block = w3.eth.get_block(r["blockNumber"])
    assert block["hash"] == r["blockHash"]
    assert block["transactions"][r["transactionIndex"]] == r["transactionHash"]
    assert w3.eth.get_block_transaction_count(r["blockNumber"]) == len(block["transactions"])
    assert block["miner"] not in (sender.address, recipient), "fees to coinbase would skew balances"
    if tx_type == 2:
        assert r["effectiveGasPrice"] == min(
            tx["maxFeePerGas"], block["baseFeePerGas"] + tx["maxPriorityFeePerGas"])
    else:
        assert r["effectiveGasPrice"] == gas_price
    assert r["effectiveGasPrice"] >= block["baseFeePerGas"]

    got = w3.eth.get_transaction(tx_hash)
    assert got["type"] == tx_type
    assert got["nonce"] == nonce0
    assert got["value"] == value
    assert got["from"] == sender.address and got["to"] == recipient
    assert got["blockHash"] == r["blockHash"] and got["blockNumber"] == r["blockNumber"]
    if tx_type == 0:
        assert got["v"] in (CHAIN_ID * 2 + 35, CHAIN_ID * 2 + 36)  # EIP-155
    else:
        assert got["chainId"] == CHAIN_ID

    assert w3.eth.get_balance(recipient) == bal_r0 + value
    assert w3.eth.get_balance(sender.address) == bal_s0 - value - r["gasUsed"] * r["effectiveGasPrice"]
    assert w3.eth.get_transaction_count(sender.address) == nonce0 + 1
    # The base fee is burnt; only the priority fee reaches the fee recipient (no other traffic now).
    assert block["miner"] == coinbase
    tip = r["effectiveGasPrice"] - block["baseFeePerGas"]
    assert w3.eth.get_balance(coinbase) == bal_c0 + r["gasUsed"] * tip


def test_several_transactions_from_one_sender_in_order(w3, funded_account):
    sender = funded_account(10 * ETHER)
    recipient = Account.create().address
    f = fees(w3)
    hashes = [send_signed(w3, sender, {"to": recipient, "value": i + 1, "nonce": i, **f})
              for i in range(5)]
    receipts = [wait_receipt(w3, h) for h in hashes]
    assert all(r["status"] == 1 for r in receipts)
    positions = [(r["blockNumber"], r["transactionIndex"]) for r in receipts]
    assert positions == sorted(positions), "nonce order must be execution order"
    spent = sum(r["gasUsed"] * r["effectiveGasPrice"] for r in receipts)
    assert w3.eth.get_balance(recipient) == 15
    assert w3.eth.get_balance(sender.address) == 10 * ETHER - 15 - spent
    assert w3.eth.get_transaction_count(sender.address) == 5


# ---------------------------------------------------------------------------------------------
# ERC-20 (contracts/Token.sol compiled by solc-js)


@pytest.fixture(scope="module")
def token(w3, dev_accounts, token_artifact):
    deployer = dev_accounts[0]
    factory = w3.eth.contract(abi=token_artifact["abi"], bytecode=token_artifact["bytecode"])
    tx = factory.constructor("Kestrel Token", "KST", TOKEN_SUPPLY).build_transaction({
        "from": deployer.address,
        "nonce": w3.eth.get_transaction_count(deployer.address),
        "chainId": CHAIN_ID,
        **fees(w3),
    })  # no "gas": web3 asks eth_estimateGas
    tx_hash = w3.eth.send_raw_transaction(deployer.sign_transaction(tx).raw_transaction)
    receipt = wait_receipt(w3, tx_hash)
    assert receipt["status"] == 1, receipt
    contract = w3.eth.contract(address=receipt["contractAddress"], abi=token_artifact["abi"])
    return {"contract": contract, "receipt": receipt, "deployer": deployer, "artifact": token_artifact}


def test_token_deployed(w3, token):
    c, r, deployer = token["contract"], token["receipt"], token["deployer"]
    assert r["to"] is None
    assert w3.eth.get_code(c.address).hex() == token["artifact"]["deployedBytecode"][2:]
    assert c.functions.name().call() == "Kestrel Token"
    assert c.functions.symbol().call() == "KST"
    assert c.functions.decimals().call() == 18
    assert c.functions.totalSupply().call() == TOKEN_SUPPLY
    assert c.functions.balanceOf(deployer.address).call() == TOKEN_SUPPLY
    total = w3.eth.get_storage_at(c.address, TOTAL_SUPPLY_SLOT)
    assert int.from_bytes(total, "big") == TOKEN_SUPPLY
    # The constructor's mint event.
    assert len(r["logs"]) == 1
    log = r["logs"][0]
    assert hx(log["topics"][0]) == TRANSFER_TOPIC
    assert hx(log["topics"][1]) == topic_of("0x" + "00" * 20)
    assert hx(log["topics"][2]) == topic_of(deployer.address)


def test_token_contract_address_is_sender_and_nonce(token):
    # CREATE address = keccak(rlp([sender, nonce]))[12:]; the deployer's first tx has nonce 0.
    deployer = token["deployer"].address
    nonce = token["contract"].w3.eth.get_transaction(token["receipt"]["transactionHash"])["nonce"]
    assert nonce < 0x80  # single-byte RLP below
    rlp = bytes([0xD6, 0x94]) + bytes.fromhex(deployer[2:]) + (bytes([nonce]) if nonce else b"\x80")
    assert token["contract"].address == to_checksum_address(keccak(rlp)[12:])


def test_token_transfer_events_and_logs(w3, token):
    c, deployer = token["contract"], token["deployer"]
    recipient = DEV_ADDRESSES[8]
    amount = 1_234 * ETHER
    before = c.functions.balanceOf(deployer.address).call()
    gas_estimate = c.functions.transfer(recipient, amount).estimate_gas({"from": deployer.address})
    assert 21_000 < gas_estimate < 200_000
    tx = c.functions.transfer(recipient, amount).build_transaction({
        "from": deployer.address, "nonce": w3.eth.get_transaction_count(deployer.address),
        "gas": gas_estimate, "chainId": CHAIN_ID, **fees(w3)})
    r = wait_receipt(w3, w3.eth.send_raw_transaction(deployer.sign_transaction(tx).raw_transaction))
    assert r["status"] == 1
    assert r["gasUsed"] <= gas_estimate

    assert c.functions.balanceOf(recipient).call() == amount
    assert c.functions.balanceOf(deployer.address).call() == before - amount
    slot = keccak(abi_encode(["address", "uint256"], [recipient, BALANCE_OF_SLOT]))
    assert int.from_bytes(w3.eth.get_storage_at(c.address, slot), "big") == amount

    # Receipt log.
    assert len(r["logs"]) == 1
    log = r["logs"][0]
    assert log["address"] == c.address
    assert [hx(t) for t in log["topics"]] == [TRANSFER_TOPIC, topic_of(deployer.address), topic_of(recipient)]
    assert int.from_bytes(log["data"], "big") == amount
    assert log["blockHash"] == r["blockHash"] and log["transactionHash"] == r["transactionHash"]
    events = c.events.Transfer().process_receipt(r)
    assert len(events) == 1
    assert events[0]["args"] == {"from": deployer.address, "to": recipient, "value": amount}

    # eth_getLogs: by address + topic in the receipt's block.
    logs = w3.eth.get_logs({"fromBlock": r["blockNumber"], "toBlock": r["blockNumber"],
                            "address": c.address, "topics": [TRANSFER_TOPIC]})
    assert len(logs) == 1
    assert logs[0]["transactionHash"] == r["transactionHash"]
    assert logs[0]["logIndex"] == log["logIndex"]
    assert logs[0]["removed"] is False
    # By block hash.
    logs = w3.eth.get_logs({"blockHash": r["blockHash"], "address": c.address})
    assert [l["transactionHash"] for l in logs] == [r["transactionHash"]]
    # By indexed arguments over the whole chain: exactly the mint (to deployer) ... and this one.
    logs = w3.eth.get_logs({"fromBlock": 0, "toBlock": "latest", "address": c.address,
                            "topics": [TRANSFER_TOPIC, None, topic_of(recipient)]})
    assert [l["transactionHash"] for l in logs] == [r["transactionHash"]]
    # OR of topics, and a topic that does not match.
    logs = w3.eth.get_logs({"fromBlock": 0, "toBlock": "latest", "address": c.address,
                            "topics": [[TRANSFER_TOPIC, APPROVAL_TOPIC]]})
    assert len(logs) >= 2
    assert w3.eth.get_logs({"fromBlock": r["blockNumber"], "toBlock": r["blockNumber"],
                            "address": c.address, "topics": [APPROVAL_TOPIC]}) == []
    # Another address.
    assert w3.eth.get_logs({"fromBlock": r["blockNumber"], "toBlock": r["blockNumber"],
                            "address": DEV_ADDRESSES[0]}) == []
    # web3's decoded event query.
    decoded = c.events.Transfer().get_logs(from_block=0, argument_filters={"to": recipient})
    assert [(e["args"]["from"], e["args"]["value"]) for e in decoded] == [(deployer.address, amount)]


def test_token_approve_and_transfer_from(w3, token, funded_account):
    c, owner = token["contract"], token["deployer"]
    spender = funded_account(ETHER)
    target = Account.create().address
    r = wait_receipt(w3, send_signed(w3, owner, {
        "to": c.address, "gas": 100_000,
        "data": c.encode_abi("approve", [spender.address, 500])}))
    assert r["status"] == 1
    assert c.events.Approval().process_receipt(r)[0]["args"] == {
        "owner": owner.address, "spender": spender.address, "value": 500}
    assert c.functions.allowance(owner.address, spender.address).call() == 500

    r = wait_receipt(w3, send_signed(w3, spender, {
        "to": c.address, "gas": 150_000,
        "data": c.encode_abi("transferFrom", [owner.address, target, 300])}))
    assert r["status"] == 1
    assert c.functions.balanceOf(target).call() == 300
    assert c.functions.allowance(owner.address, spender.address).call() == 200
    with pytest.raises(ContractLogicError, match="insufficient allowance"):
        c.functions.transferFrom(owner.address, target, 201).call({"from": spender.address})


def test_token_revert_reason_in_call_and_estimate(w3, token, node):
    c = token["contract"]
    poor = DEV_ADDRESSES[5]  # holds no tokens
    assert c.functions.balanceOf(poor).call() == 0
    with pytest.raises(ContractLogicError) as call_err:
        c.functions.transfer(DEV_ADDRESSES[6], 1).call({"from": poor})
    assert "insufficient balance" in str(call_err.value)
    with pytest.raises(ContractLogicError) as est_err:
        c.functions.transfer(DEV_ADDRESSES[6], 1).estimate_gas({"from": poor})
    assert "insufficient balance" in str(est_err.value)

    # The raw JSON-RPC shape (geth): code 3, reason in the message, ABI-encoded Error(string) in data.
    call = {"from": poor, "to": c.address, "data": c.encode_abi("transfer", [DEV_ADDRESSES[6], 1])}
    expected_data = ERROR_STRING_SELECTOR + abi_encode(["string"], ["insufficient balance"]).hex()
    for method, params in (("eth_call", [call, "latest"]), ("eth_estimateGas", [call])):
        err = raw_rpc(node.url, method, params).get("error")
        assert err is not None, method
        assert err["code"] == 3, (method, err)
        assert err["message"] == "execution reverted: insufficient balance", (method, err)
        assert err["data"].lower() == expected_data, (method, err)


def test_reverted_transaction_is_mined_with_status_0(w3, token, dev_accounts):
    c = token["contract"]
    sender = dev_accounts[7]  # holds no tokens
    bal0 = w3.eth.get_balance(sender.address)
    nonce0 = w3.eth.get_transaction_count(sender.address)
    gas = 100_000
    r = wait_receipt(w3, send_signed(w3, sender, {
        "to": c.address, "gas": gas, "nonce": nonce0,
        "data": c.encode_abi("transfer", [DEV_ADDRESSES[6], 1])}))
    assert r["status"] == 0
    assert r["logs"] == []
    assert 21_000 < r["gasUsed"] < gas
    assert w3.eth.get_transaction_count(sender.address) == nonce0 + 1
    assert w3.eth.get_balance(sender.address) == bal0 - r["gasUsed"] * r["effectiveGasPrice"]


def test_eth_to_contract_without_receive_reverts(w3, token, funded_account):
    c = token["contract"]
    sender = funded_account(ETHER)
    r = wait_receipt(w3, send_signed(w3, sender, {"to": c.address, "value": 10**15, "gas": 50_000}))
    assert r["status"] == 0
    assert w3.eth.get_balance(c.address) == 0
    assert w3.eth.get_balance(sender.address) == ETHER - r["gasUsed"] * r["effectiveGasPrice"]


def logs_bloom(logs) -> bytes:
    """The 2048-bit bloom of the yellow paper over each log's address and topics."""
    bloom = bytearray(256)
    for log in logs:
        for item in [bytes.fromhex(log["address"][2:])] + [bytes(t) for t in log["topics"]]:
            h = keccak(item)
            for i in (0, 2, 4):
                bit = ((h[i] << 8) | h[i + 1]) & 2047
                bloom[255 - bit // 8] |= 1 << (bit % 8)
    return bytes(bloom)


def test_token_block_with_several_transactions(w3, token, funded_account):
    """Several token transfers in flight at once: per-block log indexes, cumulative gas, blooms,
    and a transfer that empties a balance (storage cleared: gas refund) with exact ETH accounting."""
    c, deployer = token["contract"], token["deployer"]
    holder = funded_account(ETHER)
    sink = Account.create().address
    f = fees(w3)
    nonce = w3.eth.get_transaction_count(deployer.address)
    hashes = [send_signed(w3, deployer, {"to": c.address, "gas": 100_000, "nonce": nonce + i, **f,
                                         "data": c.encode_abi("transfer", [holder.address, 1_000 + i])})
              for i in range(4)]
    receipts = [wait_receipt(w3, h) for h in hashes]
    assert all(r["status"] == 1 for r in receipts)
    assert c.functions.balanceOf(holder.address).call() == 4_006

    for number in sorted({r["blockNumber"] for r in receipts}):
        block = w3.eth.get_block(number, full_transactions=True)
        block_receipts = [w3.eth.get_transaction_receipt(t["hash"]) for t in block["transactions"]]
        cumulative = 0
        all_logs = []
        for i, (t, br) in enumerate(zip(block["transactions"], block_receipts)):
            assert t["transactionIndex"] == i and br["transactionIndex"] == i
            assert t["blockHash"] == block["hash"] and br["blockHash"] == block["hash"]
            cumulative += br["gasUsed"]
            assert br["cumulativeGasUsed"] == cumulative
            assert bytes(br["logsBloom"]) == logs_bloom(br["logs"])
            all_logs += br["logs"]
        assert block["gasUsed"] == cumulative
        assert [l["logIndex"] for l in all_logs] == list(range(len(all_logs))), "logIndex is per block"
        assert bytes(block["logsBloom"]) == logs_bloom(all_logs)
        got = w3.eth.get_logs({"blockHash": block["hash"]})
        assert [(l["transactionHash"], l["logIndex"]) for l in got] == [
            (l["transactionHash"], l["logIndex"]) for l in all_logs]

    # Empty the holder's balance: its storage slot goes to zero and earns a refund.
    bal0 = w3.eth.get_balance(holder.address)
    r = wait_receipt(w3, send_signed(w3, holder, {"to": c.address, "gas": 100_000,
                                                  "data": c.encode_abi("transfer", [sink, 4_006])}))
    assert r["status"] == 1
    assert c.functions.balanceOf(holder.address).call() == 0
    assert c.functions.balanceOf(sink).call() == 4_006
    assert w3.eth.get_balance(holder.address) == bal0 - r["gasUsed"] * r["effectiveGasPrice"]


def test_eip7702_set_code_delegation(w3, token, funded_account):
    """Prague: a type-4 transaction installs a delegation (0xef0100 || address) in an EOA, and
    calls to the EOA run the delegate's code against the EOA's own storage."""
    c = token["contract"]
    sender = funded_account(ETHER)
    authority = Account.create()  # signs the authorization only; holds no ETH
    auth = authority.sign_authorization({"chainId": CHAIN_ID, "address": c.address, "nonce": 0})
    r = wait_receipt(w3, send_signed(w3, sender, {
        "type": 4, "to": sender.address, "value": 0, "gas": 100_000,
        "authorizationList": [auth]}))
    assert r["status"] == 1
    assert r["type"] == 4
    assert hx(w3.eth.get_code(authority.address)) == "0xef0100" + c.address[2:].lower()
    assert w3.eth.get_transaction_count(authority.address) == 1  # the authorization used nonce 0
    delegated = w3.eth.contract(address=authority.address, abi=c.abi)
    assert delegated.functions.decimals().call() == 18  # code of the token ...
    assert delegated.functions.totalSupply().call() == 0  # ... storage of the EOA


def test_initcode_too_large_never_executes(w3, node, funded_account):
    """EIP-3860: init code over 49152 bytes makes a creation invalid; like geth, the pool refuses
    it ("max initcode size exceeded")."""
    sender = funded_account(ETHER)
    before = account_state(w3, sender.address)
    raw = sign(w3, sender, {"data": b"\x00" * (49_152 + 1), "gas": 5_000_000, "value": 0})
    out = raw_rpc(node.url, "eth_sendRawTransaction", ["0x" + raw.hex()])
    assert "max initcode size exceeded" in out["error"]["message"], out
    wait_blocks(w3, 3)
    assert raw_rpc(node.url, "eth_getTransactionReceipt", [tx_hash_of(raw)])["result"] is None
    assert account_state(w3, sender.address) == before


# ---------------------------------------------------------------------------------------------
# Bad transactions: exact geth error, and nothing changes


@pytest.fixture(scope="module")
def rejected_sender(w3, dev_accounts):
    """A fresh account with 100 ETH and one mined transaction (nonce 1)."""
    acct = Account.create()
    r = wait_receipt(w3, send_signed(w3, dev_accounts[9], {"to": acct.address, "value": 100 * ETHER}))
    assert r["status"] == 1
    r = wait_receipt(w3, send_signed(w3, acct, {"to": acct.address, "value": 1}))
    assert r["status"] == 1
    assert w3.eth.get_transaction_count(acct.address) == 1
    return acct


def assert_rejected(w3, node, raw: bytes, message: str | None, sender: str | None,
                    codes=(-32000,)):
    """eth_sendRawTransaction(raw) fails with `message` in the error, and after three more blocks
    the sender's balance and nonce are unchanged and the transaction is unknown."""
    before = account_state(w3, sender) if sender else None
    out = raw_rpc(node.url, "eth_sendRawTransaction", ["0x" + raw.hex()])
    assert "result" not in out, f"accepted: {out}"
    err = out["error"]
    assert err["code"] in codes, err
    if message is not None:
        assert message in err["message"], err
    wait_blocks(w3, 3)
    if sender:
        assert account_state(w3, sender) == before
    tx_hash = tx_hash_of(raw)
    assert raw_rpc(node.url, "eth_getTransactionReceipt", [tx_hash])["result"] is None
    assert raw_rpc(node.url, "eth_getTransactionByHash", [tx_hash])["result"] is None
    return err


def test_reject_nonce_too_low(w3, node, rejected_sender):
    raw = sign(w3, rejected_sender, {"to": DEV_ADDRESSES[0], "value": 7, "nonce": 0})
    assert_rejected(w3, node, raw, "nonce too low", rejected_sender.address)


def test_reject_insufficient_funds(w3, node, rejected_sender):
    balance = w3.eth.get_balance(rejected_sender.address)
    raw = sign(w3, rejected_sender, {"to": DEV_ADDRESSES[0], "value": balance})
    assert_rejected(w3, node, raw, "insufficient funds for gas * price + value", rejected_sender.address)


def test_reject_insufficient_funds_empty_account(w3, node):
    empty = Account.create()
    raw = sign(w3, empty, {"to": DEV_ADDRESSES[0], "value": 1, "nonce": 0})
    assert_rejected(w3, node, raw, "insufficient funds for gas * price + value", empty.address)


def test_reject_intrinsic_gas_too_low(w3, node, rejected_sender):
    raw = sign(w3, rejected_sender, {"to": DEV_ADDRESSES[0], "value": 1, "gas": 20_000})
    assert_rejected(w3, node, raw, "intrinsic gas too low", rejected_sender.address)


def test_reject_exceeds_block_gas_limit(w3, node, rejected_sender):
    raw = sign(w3, rejected_sender, {"to": DEV_ADDRESSES[0], "value": 1, "gas": 300_000_000})
    assert_rejected(w3, node, raw, "exceeds block gas limit", rejected_sender.address)


@pytest.mark.parametrize("tx_type", [0, 2], ids=["legacy-eip155", "eip1559"])
def test_reject_invalid_chain_id(w3, node, rejected_sender, tx_type):
    tx = {"to": DEV_ADDRESSES[0], "value": 1, "chainId": 1}
    if tx_type == 0:
        tx["gasPrice"] = w3.eth.gas_price
    raw = sign(w3, rejected_sender, tx)
    assert_rejected(w3, node, raw, "invalid chain id", rejected_sender.address)


def test_reject_underpriced(w3, node, rejected_sender):
    assert w3.eth.get_block("latest")["baseFeePerGas"] > 1
    raw = sign(w3, rejected_sender, {"to": DEV_ADDRESSES[0], "value": 1,
                                     "maxFeePerGas": 1, "maxPriorityFeePerGas": 1})
    assert_rejected(w3, node, raw, "transaction underpriced", rejected_sender.address)


def test_reject_oversized_data(w3, node, rejected_sender):
    data = b"\x00" * (130 * 1024)  # > 128 KiB; gas covers the intrinsic and EIP-7623 floor cost
    raw = sign(w3, rejected_sender, {"to": DEV_ADDRESSES[0], "value": 1, "data": data, "gas": 2_000_000})
    assert len(raw) > 128 * 1024
    assert_rejected(w3, node, raw, "oversized data", rejected_sender.address)


@pytest.mark.parametrize("raw", [
    bytes.fromhex("deadbeef"),
    bytes.fromhex("f86b8085"),          # list header promising more than is there
    bytes.fromhex("02f8"),              # typed envelope, truncated
    b"",
], ids=["garbage", "truncated-legacy", "truncated-typed", "empty"])
def test_reject_malformed_rlp(w3, node, rejected_sender, raw):
    head0 = w3.eth.block_number
    assert_rejected(w3, node, raw, None, rejected_sender.address, codes=(-32000, -32602))
    assert w3.eth.block_number > head0
    assert w3.eth.chain_id == CHAIN_ID  # still serving


def test_reject_blob_transaction_garbage(w3, node):
    raw = bytes([0x03]) + bytes(range(64))
    assert_rejected(w3, node, raw, None, None, codes=(-32000, -32602))


def test_reject_blob_transaction_signed(w3, node, rejected_sender):
    tx = {"type": 3, "to": DEV_ADDRESSES[0], "value": 1, "maxFeePerBlobGas": GWEI,
          "blobVersionedHashes": ["0x01" + "00" * 31], **fees(w3)}
    raw = sign(w3, rejected_sender, tx)
    assert raw[0] == 0x03
    assert_rejected(w3, node, raw, None, rejected_sender.address, codes=(-32000, -32602))


def test_reject_already_known(w3, node, funded_account):
    sender = funded_account(ETHER)
    before = account_state(w3, sender.address)
    # Nonce gap: the transaction waits in the queue, so both sends see the same pool.
    raw = sign(w3, sender, {"to": DEV_ADDRESSES[0], "value": 1, "nonce": before["nonce"] + 1})
    first = raw_rpc(node.url, "eth_sendRawTransaction", ["0x" + raw.hex()])
    assert first.get("result") == tx_hash_of(raw), first
    second = raw_rpc(node.url, "eth_sendRawTransaction", ["0x" + raw.hex()])
    assert "result" not in second, second
    assert second["error"]["code"] == -32000 and "already known" in second["error"]["message"], second
    wait_blocks(w3, 3)
    assert account_state(w3, sender.address) == before
    assert raw_rpc(node.url, "eth_getTransactionReceipt", [tx_hash_of(raw)])["result"] is None


def test_reject_replacement_underpriced(w3, node, funded_account):
    sender = funded_account(ETHER)
    before = account_state(w3, sender.address)
    nonce = before["nonce"] + 5  # gap: stays queued
    fee, tip = 10 * GWEI, 2 * GWEI
    first = sign(w3, sender, {"to": DEV_ADDRESSES[0], "value": 1, "nonce": nonce,
                              "maxFeePerGas": fee, "maxPriorityFeePerGas": tip})
    out = raw_rpc(node.url, "eth_sendRawTransaction", ["0x" + first.hex()])
    assert out.get("result") == tx_hash_of(first), out
    bumped = sign(w3, sender, {"to": DEV_ADDRESSES[0], "value": 2, "nonce": nonce,
                               "maxFeePerGas": fee * 105 // 100, "maxPriorityFeePerGas": tip * 105 // 100})
    assert_rejected(w3, node, bumped, "replacement transaction underpriced", sender.address)
    assert account_state(w3, sender.address) == before


def test_replacement_with_enough_bump_replaces(w3, node, funded_account):
    sender = funded_account(ETHER)
    recipient = Account.create().address
    nonce0 = w3.eth.get_transaction_count(sender.address)
    fee, tip = 10 * GWEI, 2 * GWEI
    queued = sign(w3, sender, {"to": recipient, "value": 1, "nonce": nonce0 + 1,
                               "maxFeePerGas": fee, "maxPriorityFeePerGas": tip})
    assert raw_rpc(node.url, "eth_sendRawTransaction", ["0x" + queued.hex()]).get("result")
    better = sign(w3, sender, {"to": recipient, "value": 2, "nonce": nonce0 + 1,
                               "maxFeePerGas": fee * 12 // 10, "maxPriorityFeePerGas": tip * 12 // 10})
    out = raw_rpc(node.url, "eth_sendRawTransaction", ["0x" + better.hex()])
    assert out.get("result") == tx_hash_of(better), out
    # Fill the gap; the queued replacement follows.
    gap = send_signed(w3, sender, {"to": recipient, "value": 4, "nonce": nonce0,
                                   "maxFeePerGas": fee, "maxPriorityFeePerGas": tip})
    assert wait_receipt(w3, gap)["status"] == 1
    assert wait_receipt(w3, tx_hash_of(better))["status"] == 1
    assert raw_rpc(node.url, "eth_getTransactionReceipt", [tx_hash_of(queued)])["result"] is None
    assert w3.eth.get_balance(recipient) == 6
    assert w3.eth.get_transaction_count(sender.address) == nonce0 + 2


def test_overdraft_second_transaction_never_executes(w3, node, funded_account):
    """Two transactions each affordable alone but not together: the node may refuse the second at
    submission, or accept it and leave it out at execution; it must never execute both."""
    sender = funded_account(ETHER)
    recipient = Account.create().address
    f = fees(w3)
    first = sign(w3, sender, {"to": recipient, "value": 6 * ETHER // 10, "nonce": 0, **f})
    second = sign(w3, sender, {"to": recipient, "value": 6 * ETHER // 10, "nonce": 1, **f})
    out1 = raw_rpc(node.url, "eth_sendRawTransaction", ["0x" + first.hex()])
    out2 = raw_rpc(node.url, "eth_sendRawTransaction", ["0x" + second.hex()])
    assert out1.get("result") == tx_hash_of(first), out1
    if "error" in out2:
        assert "insufficient funds" in out2["error"]["message"] or "overdraft" in out2["error"]["message"], out2
    r1 = wait_receipt(w3, tx_hash_of(first))
    assert r1["status"] == 1
    wait_blocks(w3, 3)
    assert raw_rpc(node.url, "eth_getTransactionReceipt", [tx_hash_of(second)])["result"] is None
    assert w3.eth.get_balance(recipient) == 6 * ETHER // 10
    assert w3.eth.get_balance(sender.address) == ETHER - 6 * ETHER // 10 - r1["gasUsed"] * r1["effectiveGasPrice"]
    assert w3.eth.get_transaction_count(sender.address) == 1


# ---------------------------------------------------------------------------------------------
# JSON-RPC over raw HTTP


def test_batch_request(node):
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
        {"jsonrpc": "2.0", "id": "two", "method": "net_version", "params": []},
        {"jsonrpc": "2.0", "id": 3, "method": "eth_blockNumber", "params": []},
        {"jsonrpc": "2.0", "id": 4, "method": "no_suchMethod", "params": []},
    ]
    resp = requests.post(node.url, json=batch, timeout=5)
    assert resp.status_code == 200
    out = resp.json()
    assert isinstance(out, list) and len(out) == len(batch)
    by_id = {r["id"]: r for r in out}
    assert set(by_id) == {1, "two", 3, 4}
    assert by_id[1]["result"] == "0x539"
    assert by_id["two"]["result"] == "1337"
    assert int(by_id[3]["result"], 16) >= 0
    assert by_id[4]["error"]["code"] == -32601


def test_unknown_method(node):
    out = requests.post(node.url, json={"jsonrpc": "2.0", "id": 7, "method": "eth_noSuchThing",
                                        "params": []}, timeout=5).json()
    assert out["id"] == 7
    assert out["error"]["code"] == -32601


def test_malformed_json(node):
    resp = requests.post(node.url, data=b'{"jsonrpc":"2.0","id":1,"method":',
                         headers={"content-type": "application/json"}, timeout=5)
    out = resp.json()
    assert out["error"]["code"] == -32700
    assert out.get("id") is None


def test_invalid_params(node):
    out = requests.post(node.url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance",
                                        "params": ["not-an-address", "latest"]}, timeout=5).json()
    assert out["error"]["code"] == -32602
