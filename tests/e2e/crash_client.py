"""A client that streams signed transfers and records what a node served, and the checks that
a node still serves it, for the crash tests: tests/e2e/test_crash.py and tests/torture.

The client (a thread) sends ETH transfers from four dev accounts and records every receipt
(tx hash -> block number, block hash, status) and every head block (number -> hash, stateRoot)
it was served. `verify_against` checks a node against a snapshot of that: the head is at or above
the highest block seen, every seen receipt is returned unchanged, and every seen block has the
same hash and stateRoot. A crash loses the mempool, so on every attach the client re-reads nonces
from the chain and resends, byte for byte, every transaction that was never receipted. After a
drain, `check_accounting` checks that balances and nonces match exactly the receipts it saw, at
the head and at past blocks (historical state).
Every check takes a `note` (the seed to replay with) that ends its failure message.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import requests
from eth_account import Account
from eth_utils import to_checksum_address

from kestrel_node import CHAIN_ID, DEV_BALANCE_WEI, DEV_KEYS, KestrelNode, kestrel_bin

SENDERS = 4                      # dev accounts 1..4
RECIPIENTS = 8                   # fresh addresses
INFLIGHT_PER_SENDER_MAX = 10     # unreceipted transactions per sender
RESEND_AFTER_S = 5.0             # resend a transaction unreceipted this long
CLIENT_TICK_S = 0.05
HTTP_TIMEOUT_S = 2.0
BATCH_MAX = 100                  # requests per JSON-RPC batch
DRAIN_TIMEOUT_S = 60.0
CLIENT_ACK_TIMEOUT_S = 10.0
MAX_FEE_WEI = 20 * 10**9
TIP_WEI = 10**9
TRANSFER_GAS = 21_000
HISTORY_CHECKS = 6               # past blocks whose state check_accounting checks


class RpcError(Exception):
    pass


def batch(session: requests.Session, url: str, calls: list[tuple[str, list]]) -> list:
    """JSON-RPC batch in chunks of BATCH_MAX; returns results in call order (errors raise)."""
    results = []
    for i in range(0, len(calls), BATCH_MAX):
        chunk = calls[i:i + BATCH_MAX]
        body = [{"jsonrpc": "2.0", "id": j, "method": m, "params": p} for j, (m, p) in enumerate(chunk)]
        out = session.post(url, json=body, timeout=HTTP_TIMEOUT_S * 5).json()
        if not isinstance(out, list):
            raise RpcError(f"batch answered with a non-array: {out}")
        by_id = {r.get("id"): r for r in out}
        for j in range(len(chunk)):
            r = by_id.get(j)
            if r is None or "error" in r:
                raise RpcError(f"{chunk[j]} -> {r}")
            results.append(r["result"])
    return results


def call(session: requests.Session, url: str, method: str, params: list):
    out = session.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
                       timeout=HTTP_TIMEOUT_S).json()
    if "error" in out:
        raise RpcError(f"{method} -> {out['error']}")
    return out["result"]


class Client(threading.Thread):
    """Streams transfers and records what the node served. Shared state is guarded by `lock`."""

    def __init__(self, rng: random.Random):
        super().__init__(name="crash-client", daemon=True)
        self.rng = rng
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.sending = True
        self.url: str | None = None
        self.generation = 0           # bumped on every attach/detach
        self.acked_generation = -1    # the last generation the client loop saw
        self.senders = [Account.from_key(k) for k in DEV_KEYS[1:1 + SENDERS]]
        self.recipients = [to_checksum_address(rng.randbytes(20)) for _ in range(RECIPIENTS)]
        self.next_nonce = {a.address: 0 for a in self.senders}
        # hash -> {sender, nonce, to, value, raw, sent_at}
        self.txs: dict[str, dict] = {}
        self.by_nonce: dict[tuple[str, int], str] = {}
        # hash -> {blockNumber, blockHash, status, transactionIndex, gasUsed, effectiveGasPrice}
        self.receipts: dict[str, dict] = {}
        self.blocks: dict[int, tuple[str, str]] = {}  # number -> (hash, stateRoot)
        self.max_height = -1
        self.violations: list[str] = []
        self.send_errors: dict[str, int] = {}
        self.sent = 0
        self.failure: BaseException | None = None

    # --- control from the main thread -------------------------------------------------------

    def attach(self, url: str) -> None:
        with self.lock:
            self.url = url
            self.generation += 1

    def detach(self) -> None:
        """Stop using the node and wait until the loop has noticed, so that a snapshot taken
        afterwards holds everything the client was ever served by that node."""
        with self.lock:
            self.url = None
            self.generation += 1
            gen = self.generation
        deadline = time.monotonic() + CLIENT_ACK_TIMEOUT_S
        while time.monotonic() < deadline:
            with self.lock:
                if self.acked_generation >= gen:
                    return
            if not self.is_alive():
                raise RuntimeError(f"client thread died: {self.failure!r}")
            time.sleep(0.01)
        raise TimeoutError("client thread did not pause")

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "receipts": dict(self.receipts),
                "blocks": dict(self.blocks),
                "max_height": self.max_height,
            }

    def outstanding(self) -> int:
        with self.lock:
            return sum(1 for h in self.txs if h not in self.receipts)

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        session = requests.Session()
        seen_gen = -1
        try:
            while not self.stop_event.is_set():
                with self.lock:
                    url, gen = self.url, self.generation
                    self.acked_generation = gen
                if url is None:
                    time.sleep(0.01)
                    continue
                try:
                    if gen != seen_gen:
                        self._resync(session, url)
                        seen_gen = gen
                    self._poll(session, url)
                    self._resend_stale(session, url)
                    if self.sending:
                        self._send_new(session, url)
                except (requests.RequestException, ValueError, RpcError):
                    pass  # node down or restarting: try again next tick
                time.sleep(CLIENT_TICK_S)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            self.failure = e
            raise

    def _resync(self, session, url) -> None:
        """After a (re)start: resend, in nonce order, every unreceipted tx the chain has not used."""
        chain_nonces = batch(session, url, [("eth_getTransactionCount", [a.address, "latest"])
                                            for a in self.senders])
        for acct, chain_nonce_hex in zip(self.senders, chain_nonces):
            chain_nonce = int(chain_nonce_hex, 16)
            with self.lock:
                if chain_nonce > self.next_nonce[acct.address]:
                    self.violations.append(
                        f"{acct.address}: chain nonce {chain_nonce} > nonces ever signed "
                        f"{self.next_nonce[acct.address]}")
                lost = [self.by_nonce[(acct.address, n)]
                        for n in range(chain_nonce, self.next_nonce[acct.address])]
            for h in lost:
                self._send_raw(session, url, h)

    def _send_new(self, session, url) -> None:
        for acct in self.senders:
            with self.lock:
                inflight = sum(1 for (s, _), h in self.by_nonce.items()
                               if s == acct.address and h not in self.receipts)
                if inflight >= INFLIGHT_PER_SENDER_MAX:
                    continue
                nonce = self.next_nonce[acct.address]
                self.next_nonce[acct.address] = nonce + 1
            to = self.rng.choice(self.recipients)
            value = self.rng.randrange(1, 10**15)
            signed = acct.sign_transaction({
                "type": 2, "chainId": CHAIN_ID, "nonce": nonce, "to": to, "value": value,
                "gas": TRANSFER_GAS, "maxFeePerGas": MAX_FEE_WEI, "maxPriorityFeePerGas": TIP_WEI,
            })
            h = "0x" + bytes(signed.hash).hex()
            with self.lock:  # recorded before sending: a nonce is never signed twice
                self.txs[h] = {"sender": acct.address, "nonce": nonce, "to": to, "value": value,
                               "raw": "0x" + bytes(signed.raw_transaction).hex(), "sent_at": 0.0}
                self.by_nonce[(acct.address, nonce)] = h
            self._send_raw(session, url, h)

    def _send_raw(self, session, url, h) -> None:
        with self.lock:
            tx = self.txs[h]
            tx["sent_at"] = time.monotonic()
        out = session.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_sendRawTransaction",
                                      "params": [tx["raw"]]}, timeout=HTTP_TIMEOUT_S).json()
        with self.lock:
            self.sent += 1
            if "error" in out:
                msg = out["error"].get("message", "")
                # Fine after a resend: it is already pooled, or already in a committed block.
                key = "already known" if "already known" in msg else (
                    "nonce too low" if "nonce too low" in msg else msg)
                self.send_errors[key] = self.send_errors.get(key, 0) + 1
            elif out.get("result") != h:
                self.violations.append(f"eth_sendRawTransaction returned {out} for {h}")

    def _resend_stale(self, session, url) -> None:
        now = time.monotonic()
        with self.lock:
            stale = sorted((tx["sender"], tx["nonce"], h) for h, tx in self.txs.items()
                           if h not in self.receipts and now - tx["sent_at"] > RESEND_AFTER_S)
        for _, _, h in stale:
            self._send_raw(session, url, h)

    def _poll(self, session, url) -> None:
        with self.lock:
            pending = [h for h in self.txs if h not in self.receipts]
        calls = [("eth_getBlockByNumber", ["latest", False])]
        calls += [("eth_getTransactionReceipt", [h]) for h in pending]
        results = batch(session, url, calls)
        head = results[0]
        with self.lock:
            self._record_block(head)
            for h, r in zip(pending, results[1:]):
                if r is None:
                    continue
                rec = {
                    "blockNumber": int(r["blockNumber"], 16),
                    "blockHash": r["blockHash"],
                    "status": int(r["status"], 16),
                    "transactionIndex": int(r["transactionIndex"], 16),
                    "gasUsed": int(r["gasUsed"], 16),
                    "effectiveGasPrice": int(r["effectiveGasPrice"], 16),
                }
                self.receipts[h] = rec
                self.max_height = max(self.max_height, rec["blockNumber"])
                known = self.blocks.get(rec["blockNumber"])
                if known is not None and known[0] != rec["blockHash"]:
                    self.violations.append(
                        f"receipt {h} in block {rec['blockNumber']} {rec['blockHash']} but that "
                        f"height was served as {known[0]}")

    def _record_block(self, block: dict) -> None:
        number = int(block["number"], 16)
        entry = (block["hash"], block["stateRoot"])
        known = self.blocks.get(number)
        if known is not None and known != entry:
            self.violations.append(f"block {number} served as {known} and later as {entry}")
        self.blocks[number] = entry
        self.max_height = max(self.max_height, number)


def verify_against(url: str, snap: dict, label: str, note: str = "") -> int:
    """Everything in `snap` is still served identically by the node at `url`. Returns the head."""
    session = requests.Session()
    head = int(call(session, url, "eth_blockNumber", []), 16)
    assert head >= snap["max_height"], (
        f"{label}: head {head} is below block {snap['max_height']} that a client saw {note}")
    hashes = sorted(snap["receipts"])
    receipts = batch(session, url, [("eth_getTransactionReceipt", [h]) for h in hashes])
    for h, r in zip(hashes, receipts):
        seen = snap["receipts"][h]
        assert r is not None, f"{label}: receipt of {h} (block {seen['blockNumber']}) lost {note}"
        now = {"blockNumber": int(r["blockNumber"], 16), "blockHash": r["blockHash"],
               "status": int(r["status"], 16), "transactionIndex": int(r["transactionIndex"], 16),
               "gasUsed": int(r["gasUsed"], 16), "effectiveGasPrice": int(r["effectiveGasPrice"], 16)}
        assert now == seen, f"{label}: receipt of {h} changed: {seen} -> {now} {note}"
    heights = sorted(snap["blocks"])
    blocks = batch(session, url, [("eth_getBlockByNumber", [hex(n), False]) for n in heights])
    for n, b in zip(heights, blocks):
        assert b is not None, f"{label}: block {n} missing {note}"
        assert (b["hash"], b["stateRoot"]) == snap["blocks"][n], (
            f"{label}: block {n} was {snap['blocks'][n]}, now {(b['hash'], b['stateRoot'])} {note}")
    return head


def verify_chain_links(url: str, head: int, note: str = "") -> None:
    session = requests.Session()
    blocks = batch(session, url, [("eth_getBlockByNumber", [hex(n), False]) for n in range(head + 1)])
    for n, (parent, child) in enumerate(zip(blocks, blocks[1:]), start=1):
        assert child is not None, f"block {n} missing below head {head} {note}"
        assert child["parentHash"] == parent["hash"], f"block {n} does not link to {n - 1} {note}"


def check_accounting(url: str, client: Client, note: str = "") -> None:
    """Balances and nonces are exactly what the receipted transfers imply: at the head, and at
    past blocks spread over the chain (historical state, rebuilt through every crash)."""
    session = requests.Session()
    for h, tx in client.txs.items():
        r = client.receipts[h]
        assert r["status"] == 1, f"transfer {h} failed: {r} {note}"
        assert r["gasUsed"] == TRANSFER_GAS
    miners = {b["miner"].lower() for b in batch(
        session, url, [("eth_getBlockByNumber", [hex(r["blockNumber"]), False])
                       for r in list(client.receipts.values())[:20]])}
    involved = {a.address.lower() for a in client.senders} | {r.lower() for r in client.recipients}
    assert not miners & involved, "a sender or recipient is the coinbase: balances would include fees"
    numbers = sorted({r["blockNumber"] for r in client.receipts.values()})
    past = [numbers[i * (len(numbers) - 1) // (HISTORY_CHECKS - 1)] for i in range(HISTORY_CHECKS)] if numbers else []
    for at in ["latest", *sorted(set(past))]:
        _check_state_at(session, url, client, at, f"at block {at} {note}")


def _check_state_at(session: requests.Session, url: str, client: Client, at, note: str) -> None:
    """Every sender's nonce and balance and every recipient's balance at block `at` (a number, or
    "latest" for all receipts) are what the receipts of the blocks up to it imply."""
    spent = {a.address: 0 for a in client.senders}
    received = {r: 0 for r in client.recipients}
    nonces = {a.address: set() for a in client.senders}
    for h, tx in client.txs.items():
        r = client.receipts[h]
        if at != "latest" and r["blockNumber"] > at:
            continue
        spent[tx["sender"]] += tx["value"] + r["gasUsed"] * r["effectiveGasPrice"]
        received[tx["to"]] += tx["value"]
        nonces[tx["sender"]].add(tx["nonce"])
    block = at if at == "latest" else hex(at)
    calls = [("eth_getTransactionCount", [a, block]) for a in spent]
    calls += [("eth_getBalance", [a, block]) for a in spent]
    calls += [("eth_getBalance", [a, block]) for a in received]
    answers = [int(x, 16) for x in batch(session, url, calls)]
    counts, balances = answers[:len(spent)], answers[len(spent):]
    for addr, n in zip(spent, counts):
        assert nonces[addr] == set(range(n)), f"{addr}: nonce {n}, receipted nonces {sorted(nonces[addr])} {note}"
    expected = [DEV_BALANCE_WEI - s for s in spent.values()] + list(received.values())
    for addr, bal, want in zip([*spent, *received], balances, expected):
        assert bal == want, f"{addr}: balance {bal} != {want} {note}"


def drain(client: Client, note: str) -> dict:
    """Stops sending new transactions and waits until everything sent is receipted; returns the
    client's snapshot then."""
    client.sending = False
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while client.outstanding() and time.monotonic() < deadline:
        assert client.is_alive(), f"client thread died: {client.failure!r}"
        time.sleep(0.2)
    client.detach()
    assert client.outstanding() == 0, (
        f"{client.outstanding()} transactions never receipted within {DRAIN_TIMEOUT_S}s; "
        f"send errors {client.send_errors} {note}")
    assert not client.violations, f"{client.violations} {note}"
    return client.snapshot()


def check_datadir(datadir: Path, snap: dict, label: str, note: str = "",
                  genesis: Path | None = None) -> dict:
    """Runs `kestrel check-datadir` on a killed node's datadir: its block log must be one
    certified hash chain whose commit proofs verify, the database its execution, and both must
    hold every block the client was served. Returns the check's report."""
    cmd = [str(kestrel_bin()), "check-datadir", "--datadir", str(datadir)]
    if genesis is not None:
        cmd += ["--genesis", str(genesis)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{label}: check-datadir failed: {out.stderr.strip()[-2000:]} {note}"
    report = json.loads(out.stdout.strip().splitlines()[-1])
    seen = snap["max_height"]
    assert report["db_head"] >= seen and report["log_height"] >= seen, (
        f"{label}: the client was served block {seen}, the datadir holds {report} {note}")
    assert report["log_height"] == 0 or report["commit_proofs"] > 0, f"{label}: {report} {note}"
    return report


def kill_restart_cycles(tmp_path: Path, seed: int, cycles: int, uptime_s: tuple[float, float],
                        early_kill_chance: float, note: str, node_args: list[str] | None = None) -> dict:
    """Runs a dev node under a Client's load and SIGKILLs it `cycles` times at random moments
    (uptime uniform in `uptime_s`), each time with `early_kill_chance` also once more while it
    is starting up; checks after every restart, and after a final SIGTERM and drain, that
    nothing the client saw is lost or changed (see the module's docstring). `note` ends every
    failure message (the seed to replay with); `node_args` are more `kestrel node` flags.
    Returns the counts: kills, early kills, receipts, blocks seen, sends, the longest restart."""
    rng = random.Random(seed)
    early_kills = 0
    node = KestrelNode(datadir=tmp_path / "data", log_dir=tmp_path, extra_args=node_args)
    client = Client(random.Random(rng.random()))
    t_start = time.monotonic()
    restarts_s = []
    proofs_checked = 0
    try:
        node.start()
        client.attach(node.url)
        client.start()
        for cycle in range(cycles):
            time.sleep(rng.uniform(*uptime_s))
            node.kill9()
            client.detach()
            snap = client.snapshot()
            assert not client.violations, f"{client.violations} {note}"
            checked = check_datadir(node.datadir, snap, f"cycle {cycle}", note)
            proofs_checked += checked["commit_proofs"]
            if rng.random() < early_kill_chance:
                # Kill it again while it is still starting up (recovering).
                node.start(wait=False)
                time.sleep(rng.uniform(0.02, 0.5))
                node.kill9()
                early_kills += 1
                check_datadir(node.datadir, snap, f"cycle {cycle}, killed starting up", note)
            t0 = time.monotonic()
            node.start()
            restarts_s.append(time.monotonic() - t0)
            head = verify_against(node.url, snap, f"cycle {cycle}", note)
            print(f"cycle {cycle}: head {snap['max_height']} -> {head}, {len(snap['receipts'])} receipts "
                  f"kept, log {checked['log_height']} blocks with {checked['commit_proofs']} commit proofs "
                  f"checked, restart {restarts_s[-1]:.2f}s, {client.outstanding()} unreceipted to resend")
            client.attach(node.url)

        # A clean shutdown (SIGTERM) must keep everything too.
        time.sleep(rng.uniform(*uptime_s))
        client.detach()
        snap = client.snapshot()
        code = node.stop(signal.SIGTERM)
        assert code == 0, f"SIGTERM shutdown exited with {code}"
        node.start()
        verify_against(node.url, snap, "after SIGTERM", note)
        client.attach(node.url)

        snap = drain(client, note)
        head = verify_against(node.url, snap, "final", note)
        verify_chain_links(node.url, head, note)
        check_accounting(node.url, client, note)
        print(f"dev node: {cycles + early_kills} kills ({early_kills} during start-up) in "
              f"{time.monotonic() - t_start:.1f}s: head {head}, {len(snap['receipts'])} receipts, "
              f"{client.sent} sends, send errors {client.send_errors}, "
              f"restart max {max(restarts_s):.2f}s, {proofs_checked} commit proofs checked after kills {note}")
        return {"kills": cycles + early_kills, "early_kills": early_kills, "head": head,
                "receipts": len(snap["receipts"]), "blocks": len(snap["blocks"]),
                "sends": client.sent, "restart_max_s": max(restarts_s)}
    finally:
        client.stop_event.set()
        client.join(timeout=10)
        node.stop()
