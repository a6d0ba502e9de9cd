"""Torture test (issue 19): a seeded supervisor SIGKILLs and restarts the dev node, then the
validators of a 4-node loopback testnet, at random moments under steady load, and checks that
nothing final is lost and that a fresh node replaying the chain reaches the same state.

The load is crash_client.Client: signed transfers from four dev accounts, every receipt and head
block it was served recorded, unreceipted transactions resent after a crash. Checked:

- every block that was final before a kill (the victim's head just before it, and every block
  the client was served) is still served with the same hash and state root after the restart;
- every receipt the client saw is still served unchanged (block, hash, status, index, gas);
- after a drain, balances and nonces are exactly what the receipts imply, the chain links, and
  all four validators agree on every block (hash, state root, receipts root);
- replay: a validator whose datadir is wiped (same key and config) catches up by block sync and
  reports the same block hash, state root and receipts root at every height, every receipt the
  client saw, and then finalizes new blocks with the others;
- liveness: after each restart (and at the end, all four up) the chain finalizes a new block.

The dev chain has no way to replay into a fresh node: `kestrel` has no import subcommand and a
dev node does not sync from peers (the import path, pipeline/src/import.rs, serves the
conformance runner and validators' block sync), so replay is covered through the testnet.

Seeded: KESTREL_TORTURE_SEED=<n> replays a run (printed at the start and in every failure).
KESTREL_TORTURE_DEV_KILLS (default 30) and KESTREL_TORTURE_VALIDATOR_KILLS (default 24) set the
kill counts (kills of a process still starting up count too); docs/SECURITY.md has the runs.
"""

from __future__ import annotations

import os
import random
import shutil
import time

import pytest
import requests

from crash_client import (Client, RpcError, batch, check_accounting, check_datadir, drain,
                          kill_restart_cycles, verify_against, verify_chain_links)
from testnet import Testnet, wait_until

SEED = int(os.environ.get("KESTREL_TORTURE_SEED", random.SystemRandom().randrange(2**32)))
DEV_KILLS = int(os.environ.get("KESTREL_TORTURE_DEV_KILLS", "30"))
VALIDATOR_KILLS = int(os.environ.get("KESTREL_TORTURE_VALIDATOR_KILLS", "24"))
NOTE = f"(replay with KESTREL_TORTURE_SEED={SEED})"

BLOCK_TIME_MS = 200
UPTIME_S = (0.3, 2.0)            # how long a process runs between kills (uniform)
EARLY_KILL_CHANCE = 0.2          # a restart is also killed while it is starting up
SECOND_DOWN_CHANCE = 0.2         # a second validator is killed too: no quorum until one is back
NO_QUORUM_S = (0.5, 3.0)         # how long two validators stay down
STARTING_UP_S = (0.02, 0.3)      # how long a restart runs before an early kill
CATCH_UP_TIMEOUT_S = 30.0
# After each cycle the chain must finalize a new block within this (ten 2 s round timeouts).
PROGRESS_TIMEOUT_S = 20.0
# A validator restarted right after a kill can find its p2p port still held for a moment
# (likely the killed process's io_uring, torn down after it is reaped); like systemd's
# Restart=on-failure, the supervisor starts it again after a pause.
BIND_RETRIES_MAX = 50
BIND_RETRY_PAUSE_S = 0.1
# KESTREL_TORTURE_BACK_TO_BACK=1: the next kill does not wait for the chain to finalize a new
# block, so every validator can crash while the same certified block is in flight (docs/SECURITY.md).
BACK_TO_BACK = os.environ.get("KESTREL_TORTURE_BACK_TO_BACK", "0") == "1"
NEW_BLOCKS_AFTER_REPLAY = 5

# Each run's kill count scales its time; ten minutes is far above the default counts (~3 min).
pytestmark = pytest.mark.timeout(600 + 10 * (DEV_KILLS + VALIDATOR_KILLS))


def test_dev_node_keeps_everything_final_through_kills(tmp_path):
    print(f"\ntorture KESTREL_TORTURE_SEED={SEED}: dev node, {DEV_KILLS} kill cycles")
    stats = kill_restart_cycles(tmp_path, SEED, DEV_KILLS, UPTIME_S, EARLY_KILL_CHANCE, NOTE,
                                ["--block-time-ms", str(BLOCK_TIME_MS)])
    assert stats["kills"] >= DEV_KILLS
    assert stats["receipts"] > 0 and stats["head"] > 0, f"no load got through: {stats} {NOTE}"


def head_block(v) -> tuple[int, str, str]:
    b = v.call("eth_getBlockByNumber", ["latest", False])
    return int(b["number"], 16), b["hash"], b["stateRoot"]


def blocks(url: str, first: int, last: int) -> list[tuple[str, str, str]]:
    """(hash, stateRoot, receiptsRoot) of blocks first..=last; every one must be there."""
    out = batch(requests.Session(), url,
                [("eth_getBlockByNumber", [hex(n), False]) for n in range(first, last + 1)])
    assert all(out), f"{url}: a block in {first}..{last} is missing {NOTE}"
    return [(b["hash"], b["stateRoot"], b["receiptsRoot"]) for b in out]


class Supervisor:
    """Kills and restarts validators of `net` while `client` sends through one of them."""

    def __init__(self, net: Testnet, client: Client, rng: random.Random):
        self.net = net
        self.client = client
        self.rng = rng
        self.attached = 0
        self.kills = 0
        self.early_kills = 0
        self.no_quorum = 0
        self.bind_retries = 0
        self.progress_s: list[float] = []
        # The victim's head just before each kill: height -> (hash, stateRoot).
        self.finals: dict[int, tuple[str, str]] = {}
        self.catch_up_s: list[float] = []
        self.proofs_checked = 0

    def record_final(self, v) -> int:
        number, h, root = head_block(v)
        known = self.finals.setdefault(number, (h, root))
        assert known == (h, root), (
            f"validator {v.index} serves block {number} as {(h, root)}, another as {known} {NOTE}")
        return number

    def kill(self, v) -> int:
        """SIGKILLs `v`, moving the client to a live validator first; returns v's last head."""
        head = self.record_final(v)
        if v.index == self.attached:
            self.client.detach()
            self.attached = -1
        v.kill9()
        self.kills += 1
        checked = check_datadir(v.datadir, {"max_height": head}, f"validator {v.index}", NOTE,
                                genesis=self.net.root / "genesis.json")
        self.proofs_checked += checked["commit_proofs"]
        if self.attached < 0:
            self.attached = self.rng.choice(self.net.running()).index
            self.client.attach(self.net[self.attached].url)
        return head

    def restart(self, v) -> None:
        if self.rng.random() < EARLY_KILL_CHANCE:
            v.start(wait=False)
            time.sleep(self.rng.uniform(*STARTING_UP_S))
            v.kill9()
            self.kills += 1
            self.early_kills += 1
        for _ in range(BIND_RETRIES_MAX):
            try:
                v.start()
                return
            except RuntimeError as e:
                if "Address already in use" not in str(e):
                    raise
                self.bind_retries += 1
                time.sleep(BIND_RETRY_PAUSE_S)
        raise AssertionError(f"validator {v.index}'s port stayed in use for "
                             f"{BIND_RETRIES_MAX * BIND_RETRY_PAUSE_S:.0f}s after its kill {NOTE}")

    def cycle(self, n: int) -> None:
        time.sleep(self.rng.uniform(*UPTIME_S))
        live = self.net.running()
        victims = [self.rng.choice(live)]
        if self.rng.random() < SECOND_DOWN_CHANCE:
            victims.append(self.rng.choice([v for v in live if v is not victims[0]]))
            self.no_quorum += 1
        heads = {v.index: self.kill(v) for v in victims}
        if len(victims) == 2:
            time.sleep(self.rng.uniform(*NO_QUORUM_S))
        snap = self.client.snapshot()
        assert not self.client.violations, f"{self.client.violations} {NOTE}"
        for v in victims:
            self.restart(v)
            # Straight from its own disk, before any block sync: what it had final is there.
            mine = v.head()
            assert mine >= heads[v.index], (
                f"cycle {n}: validator {v.index} restarted at head {mine}, below its {heads[v.index]} "
                f"before the kill {NOTE}")
            b = v.block(heads[v.index])
            assert (b["hash"], b["stateRoot"]) == self.finals[heads[v.index]], (
                f"cycle {n}: validator {v.index}'s block {heads[v.index]} changed across the kill {NOTE}")
        for v in victims:
            t0 = time.monotonic()
            wait_until(lambda v=v: v.head() >= snap["max_height"], CATCH_UP_TIMEOUT_S,
                       f"cycle {n}: validator {v.index} to catch up to {snap['max_height']} {NOTE}")
            self.catch_up_s.append(time.monotonic() - t0)
            verify_against(v.url, snap, f"cycle {n}, validator {v.index}", NOTE)
        if not BACK_TO_BACK:
            # The chain goes on: all four are back, so a new block must be finalized.
            top = max(heads.values())
            t0 = time.monotonic()
            wait_until(lambda: max(v.head() for v in self.net.validators) > top, PROGRESS_TIMEOUT_S,
                       f"cycle {n}: the chain to finalize a block past {top} after the restart {NOTE}")
            self.progress_s.append(time.monotonic() - t0)
        print(f"cycle {n}: killed {sorted(heads)} at heads {sorted(heads.values())}, client saw "
              f"{snap['max_height']}, {len(snap['receipts'])} receipts kept, kills so far {self.kills}")

    def check_all_agree(self, snap: dict) -> int:
        """Every validator serves what the client saw and the same blocks; returns the height."""
        top = max(snap["max_height"], max(self.finals))
        for v in self.net.validators:
            wait_until(lambda v=v: v.head() >= top, CATCH_UP_TIMEOUT_S,
                       f"validator {v.index} to reach {top} {NOTE}")
            verify_against(v.url, snap, f"final, validator {v.index}", NOTE)
        reference = blocks(self.net[0].url, 1, top)
        for v in self.net.validators[1:]:
            mine = blocks(v.url, 1, top)
            differ = [n for n, (a, b) in enumerate(zip(reference, mine), start=1) if a != b]
            assert not differ, f"validator {v.index} differs from validator 0 at heights {differ[:5]} {NOTE}"
        for number, (h, root) in self.finals.items():
            assert reference[number - 1][:2] == (h, root), f"final block {number} changed {NOTE}"
        verify_chain_links(self.net[0].url, top, NOTE)
        return top


def test_testnet_keeps_everything_final_through_kills_and_a_wiped_validator_replays(tmp_path):
    print(f"\ntorture KESTREL_TORTURE_SEED={SEED}: 4-validator testnet, {VALIDATOR_KILLS} kills")
    rng = random.Random(SEED + 1)  # not the dev test's stream: either test replays alone
    net = Testnet(tmp_path / "testnet", 4, ["--block-time-ms", str(BLOCK_TIME_MS)])
    client = Client(random.Random(rng.random()))
    sup = Supervisor(net, client, rng)
    t_start = time.monotonic()
    try:
        net.start_all()
        wait_until(lambda: net[0].head() >= 3, CATCH_UP_TIMEOUT_S, "first blocks")
        client.attach(net[0].url)
        client.start()
        n = 0
        while sup.kills < VALIDATOR_KILLS:
            sup.cycle(n)
            n += 1
        # All four are up: the chain must go on (with back-to-back kills it may have halted).
        top = max(v.head() for v in net.validators)
        wait_until(lambda: min(v.head() for v in net.validators) > top, PROGRESS_TIMEOUT_S,
                   f"the chain, halted at {top} with all four validators up, to finalize a block {NOTE}")

        # Drain: every transaction sent ends up receipted; then everyone agrees on everything.
        snap = drain(client, NOTE)
        top = sup.check_all_agree(snap)
        check_accounting(net[0].url, client, NOTE)

        # Replay: one validator loses its datadir (key and config kept) and syncs from the others.
        fresh = rng.choice(net.validators)
        fresh.kill9()
        sup.kills += 1
        shutil.rmtree(fresh.datadir)
        t0 = time.monotonic()
        fresh.start()
        others = [v for v in net.validators if v is not fresh]
        target = max(v.head() for v in others)
        wait_until(lambda: fresh.head() >= target, CATCH_UP_TIMEOUT_S,
                   f"wiped validator {fresh.index} to replay up to {target} {NOTE}")
        replay_s = time.monotonic() - t0
        reference = blocks(others[0].url, 1, target)
        replayed = blocks(fresh.url, 1, target)
        differ = [n for n, (a, b) in enumerate(zip(reference, replayed), start=1) if a != b]
        assert not differ, (
            f"wiped validator {fresh.index} replayed different blocks at heights {differ[:5]}: "
            f"{[(reference[n - 1], replayed[n - 1]) for n in differ[:2]]} {NOTE}")
        verify_against(fresh.url, snap, f"wiped validator {fresh.index}", NOTE)
        # And it goes on with the others: new blocks, the same on both.
        wait_until(lambda: fresh.head() >= target + NEW_BLOCKS_AFTER_REPLAY, CATCH_UP_TIMEOUT_S,
                   f"wiped validator {fresh.index} to finalize new blocks {NOTE}")
        wait_until(lambda: others[0].head() >= target + NEW_BLOCKS_AFTER_REPLAY, CATCH_UP_TIMEOUT_S,
                   f"validator {others[0].index} to finalize new blocks {NOTE}")
        last = target + NEW_BLOCKS_AFTER_REPLAY
        assert blocks(fresh.url, target + 1, last) == blocks(others[0].url, target + 1, last), NOTE

        codes = net.stop_all()
        assert codes == [0, 0, 0, 0], f"validators exited with {codes} at SIGTERM {NOTE}"
        print(f"testnet: {sup.kills} kills ({sup.early_kills} during start-up, {sup.no_quorum} times "
              f"two down) in {time.monotonic() - t_start:.1f}s: height {top}, {len(snap['receipts'])} "
              f"receipts, {client.sent} sends, catch-up max {max(sup.catch_up_s):.2f}s, "
              f"progress after a restart max {max(sup.progress_s, default=0):.2f}s, "
              f"{sup.bind_retries} starts retried for a held port, {sup.proofs_checked} commit "
              f"proofs checked after kills; wiped validator "
              f"{fresh.index} replayed {target} blocks in {replay_s:.2f}s {NOTE}")
    except (RpcError, requests.RequestException, TimeoutError) as e:
        if NOTE in str(e):
            raise
        raise AssertionError(f"{e!r} {NOTE}") from e
    finally:
        client.stop_event.set()
        client.join(timeout=10)
        net.stop_all()
