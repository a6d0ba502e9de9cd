"""Four validators (real `kestrel` processes and sockets) finalize one chain.

Three times: on loopback; with each validator in its own network namespace behind a veth pair with
20-50 ms of netem delay; and on the same namespaces without delay, so a kernel without sch_netem
still runs the chain over a real network path. A variant that cannot be made here (not root, no
`ip`/`tc`, no netem) is skipped, saying why. In order, on one testnet: transactions sent to validator 0 are included and every validator
reports the same blocks (hash, state root, receipts root) and receipts; with one validator
killed (SIGKILL) the others keep finalizing; restarted, it catches up by block sync within 30 s
and agrees; with two killed the chain stops finalizing (no quorum) without forking; with one of
them back it resumes.
"""

from __future__ import annotations

import time

import pytest
import requests

from testnet import (Namespaces, Sender, Testnet, assert_agree, documented_metrics, exported_metrics,
                     series, wait_until)

pytestmark = pytest.mark.timeout(420)

BLOCK_TIME_MS = 200
# Round timeout is max(3 × block time, 2 s): a stall is visible after a few of them.
ROUND_TIMEOUT_S = 2.0
FINALIZE_TIMEOUT_S = 30.0
CATCH_UP_TIMEOUT_S = 30.0
TXS_PER_BATCH = 8
RECIPIENT = "0x000000000000000000000000000000000000bEEF"


@pytest.fixture(scope="module", params=["loopback", "netns", "netns-nodelay"])
def net(request, tmp_path_factory):
    namespaces = None
    if request.param != "loopback":
        netem = request.param == "netns"
        namespaces = Namespaces(4) if netem else Namespaces(4, delay=None)
        try:
            namespaces.setup()
        except Exception as e:  # noqa: BLE001  (any reason it cannot be made is a skip)
            detail = getattr(e, "stderr", b"") or b""
            needs = "root, iproute2 and sch_netem" if netem else "root and iproute2"
            pytest.skip(f"cannot make network namespaces{' with netem' if netem else ''} here ({e}: "
                        f"{detail.decode(errors='replace').strip()}); needs {needs}")
    t = Testnet(tmp_path_factory.mktemp(f"testnet-{request.param}"), 4,
                ["--block-time-ms", str(BLOCK_TIME_MS)], namespaces)
    try:
        t.start_all()
        yield t
    finally:
        codes = t.stop_all()
        print(f"\nvalidators stopped, exit codes {codes}; logs under {t.root}")
        if namespaces is not None:
            namespaces.cleanup()


def send_batch(net, sender: Sender, via: int, n: int = TXS_PER_BATCH) -> list[str]:
    hashes = []
    for _ in range(n):
        raw = sender.transfer(RECIPIENT, 1)
        hashes.append(net[via].call("eth_sendRawTransaction", ["0x" + raw.hex()]))
    return hashes


def wait_receipts(v, hashes: list[str], timeout: float = FINALIZE_TIMEOUT_S, net=None) -> list[dict]:
    """Every receipt from `v`; on a timeout, with `net`, says what each live validator knows."""
    def all_there():
        receipts = [v.receipt(h) for h in hashes]
        return receipts if all(receipts) else None

    try:
        return wait_until(all_there, timeout, f"receipts of {len(hashes)} txs on validator {v.index}")
    except TimeoutError as e:
        if net is None:
            raise
        raise TimeoutError(f"{e}; {views(net, hashes)}") from None


def views(net, hashes: list[str]) -> str:
    """Each live validator's head, its view of the first missing transaction and of its sender."""
    out = []
    for v in net.running():
        try:
            missing = next((h for h in hashes if not v.receipt(h)), hashes[0])
            tx = v.call("eth_getTransactionByHash", [missing])
            nonces = ""
            if tx:
                nonces = (f", sender nonce latest {int(v.call('eth_getTransactionCount', [tx['from'], 'latest']), 16)}"
                          f" pending {int(v.call('eth_getTransactionCount', [tx['from'], 'pending']), 16)}")
            out.append(f"validator {v.index}: head {v.head()}, tx {missing} "
                       f"{'nonce ' + str(int(tx['nonce'], 16)) if tx else 'unknown'}{nonces}")
        except (requests.RequestException, RuntimeError, ValueError) as err:
            out.append(f"validator {v.index}: {err!r}")
    return "; ".join(out)


def assert_receipts_agree(validators, hashes: list[str]) -> None:
    for h in hashes:
        receipts = [wait_receipts(v, [h])[0] for v in validators]
        keys = ("blockHash", "blockNumber", "status", "gasUsed", "cumulativeGasUsed", "transactionIndex")
        seen = {tuple(r[k] for k in keys) for r in receipts}
        assert len(seen) == 1, f"receipt of {h} differs: {seen}"
        assert receipts[0]["status"] == "0x1"


def advances(v, blocks: int, timeout: float) -> int:
    start = v.head()
    return wait_until(lambda: v.head() >= start + blocks and v.head(), timeout,
                      f"validator {v.index} to finalize {blocks} blocks past {start}")


def test_transactions_are_included_and_all_validators_agree(net):
    advances(net[0], 3, FINALIZE_TIMEOUT_S)
    sender = Sender(0)
    hashes = send_batch(net, sender, via=0)
    receipts = wait_receipts(net[0], hashes, net=net)
    top = max(int(r["blockNumber"], 16) for r in receipts)
    assert_agree(net.validators, top)
    assert_receipts_agree(net.validators, hashes)
    # Blocks come from every leader, not only the validator the transactions were sent to.
    head = advances(net[0], 8, FINALIZE_TIMEOUT_S)
    miners = {net[0].block(n)["miner"].lower() for n in range(1, head + 1)}
    assert len(miners) == 4, miners
    net.sender = sender


def test_validator_metrics_are_documented(net):
    docs = documented_metrics()
    exported = exported_metrics(net[0])
    assert not exported - docs, f"exported but not in docs/metrics.md: {sorted(exported - docs)}"
    for name in ("kestrel_consensus_round", "kestrel_consensus_height", "kestrel_consensus_votes_total",
                 "kestrel_consensus_commit_latency_seconds", "kestrel_net_peers_connected"):
        assert name in exported, name
    assert net[0].metric("kestrel_net_peers_connected") == 3
    # net_peerCount says the same over JSON-RPC.
    assert net[0].call("net_peerCount") == "0x3"
    assert net[0].metric("kestrel_consensus_halted") == 0
    # They move: every validator has led, voted, and assembled QCs by now.
    before = {v.index: (v.metric("kestrel_consensus_round"), v.metric("kestrel_consensus_height"))
              for v in net.validators}
    advances(net[0], 2, FINALIZE_TIMEOUT_S)
    for v in net.validators:
        # Each validator's gauges move on its own schedule (a slow box can lag by a round).
        wait_until(lambda v=v: v.metric("kestrel_consensus_round") > before[v.index][0]
                   and v.metric("kestrel_consensus_height") > before[v.index][1],
                   FINALIZE_TIMEOUT_S, f"validator {v.index}'s round and height to advance")
        for name in ("kestrel_consensus_proposals_total", "kestrel_consensus_votes_total",
                     "kestrel_consensus_qcs_created_total", "kestrel_consensus_commit_latency_seconds_count"):
            assert (v.metric(name) or 0) > 0, (v.index, name)
        for name in ("kestrel_net_received_bytes_total", "kestrel_net_sent_bytes_total"):
            per_peer = series(v, name)
            assert len(per_peer) == 3 and all(b > 0 for b in per_peer.values()), (v.index, name, per_peer)


def test_one_validator_down_chain_keeps_finalizing_and_it_catches_up(net):
    sender = net.sender
    behind = net[3].head()
    net[3].kill9()
    advances(net[0], 12, FINALIZE_TIMEOUT_S)
    # Validator 3's turns time out: the others count the timeouts, its failures as leader, and
    # assemble timeout certificates; they time its rounds out early, seeing it disconnected.
    for name in ("kestrel_consensus_timeouts_total", "kestrel_consensus_leader_failures_total",
                 "kestrel_consensus_tcs_created_total", "kestrel_consensus_early_timeouts_total"):
        assert (net[0].metric(name) or 0) > 0, name
    hashes = send_batch(net, sender, via=0)
    receipts = wait_receipts(net[0], hashes, net=net)
    live = net.validators[:3]
    assert_receipts_agree(live, hashes)
    # Restarted, it syncs what it missed and takes part again.
    net[3].start()
    target = net[0].head()
    started = time.monotonic()
    wait_until(lambda: net[3].head() >= target, CATCH_UP_TIMEOUT_S,
               f"restarted validator 3 to reach {target} from {behind}")
    caught_up_s = time.monotonic() - started
    print(f"validator 3 caught up from {behind} to {target} in {caught_up_s:.1f}s")
    top = max(int(r["blockNumber"], 16) for r in receipts)
    assert_agree(net.validators, max(top, target))
    assert_receipts_agree(net.validators, hashes)
    # And it finalizes new blocks with the others.
    more = send_batch(net, sender, via=0)
    wait_receipts(net[3], more, net=net)
    assert_receipts_agree(net.validators, more)


def test_two_validators_down_stop_finalizing_without_forking_then_resume(net):
    net[2].kill9()
    net[3].kill9()
    # A block or two may still finalize from certificates already formed.
    time.sleep(2 * ROUND_TIMEOUT_S)
    stalled = net[0].head()
    time.sleep(3 * ROUND_TIMEOUT_S)
    assert net[0].head() == stalled, "finalized without a quorum"
    assert net[1].head() == stalled or abs(net[1].head() - stalled) <= 1
    assert_agree(net.validators[:2], min(net[0].head(), net[1].head()))
    # One back: three of four is a quorum again.
    net[2].start()
    resumed = wait_until(lambda: net[0].head() >= stalled + 3 and net[0].head(), FINALIZE_TIMEOUT_S,
                         f"finality to resume past {stalled}")
    assert_agree(net.validators[:3], resumed)
    hashes = send_batch(net, net.sender, via=0)
    wait_receipts(net[2], hashes, net=net)
    assert_receipts_agree(net.validators[:3], hashes)


def test_validators_shut_down_cleanly(net):
    net[3].start()
    for i, code in enumerate(net.stop_all()):
        assert code == 0, f"validator {i} exited with {code}"
