"""Finding 2 of issue 19: slowloris. 1,000 sockets that each sent headers announcing a 1,000-byte
body, one byte of it, then nothing, held every connection place: every call answered `429 Too
many connections` for as long as they stayed (nothing timed out in 150 s).

Now connections are counted per IP address from accept to close, and a request whose headers or
body do not arrive in time is answered (408) and closed."""

from __future__ import annotations

import socket
import time

from limits_util import ATTACKER_IP, metric, p99, timed_calls

ATTACK_SOCKETS = 1000
PER_IP_MAX = 64
HEADER_TIMEOUT_MS = 2000
BODY_TIMEOUT_MS = 4000
HEALTHY_P99_MAX_S = 0.1
STALLED_BODY = (
    b"POST / HTTP/1.1\r\nHost: kestrel\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000\r\n\r\n{"
)
STALLED_HEADERS = b"POST / HTTP/1.1\r\nHost: kestrel\r\nContent-Type: application/json\r\n"


def open_stalled(port: int, sources: list[str], count: int, request: bytes) -> list[socket.socket]:
    """`count` connections, spread over `sources`, each sending `request` and then nothing."""
    socks = []
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((sources[i % len(sources)], 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        try:
            s.sendall(request)
        except OSError:
            pass  # refused and closed by the node already
        socks.append(s)
    return socks


def answers(socks: list[socket.socket]) -> list[str]:
    """What each socket got, without waiting: its status line, "closed", "reset", or "held"."""
    out = []
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(4096)
            out.append(data.split(b"\r\n", 1)[0].decode() if data else "closed")
        except BlockingIOError:
            out.append("held")
        except ConnectionResetError:
            out.append("reset")
    return out


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def wait_open_connections(node, at_most: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while (open_ := metric(node, "kestrel_rpc_open_connections")) > at_most:
        assert time.monotonic() < deadline, f"{open_} connections still open"
        time.sleep(0.1)
    return open_


def test_stalled_bodies_from_one_host_do_not_shut_out_others(start_node):
    node = start_node(
        "--rpc-connections-per-ip", str(PER_IP_MAX),
        "--rpc-body-timeout-ms", str(BODY_TIMEOUT_MS),
    )
    started = time.monotonic()
    socks = open_stalled(node.http_port, [ATTACKER_IP], ATTACK_SOCKETS, STALLED_BODY)
    try:
        latencies = timed_calls(node, "eth_blockNumber", [], 150, pause_s=0.005)
        during = time.monotonic() - started
        assert during < BODY_TIMEOUT_MS / 1000, f"the healthy calls took {during:.1f}s, past the attack"
        print(f"\nhealthy eth_blockNumber during {ATTACK_SOCKETS} stalled bodies: "
              f"p99 {p99(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
        assert p99(latencies) < HEALTHY_P99_MAX_S
        refused = metric(node, "kestrel_rpc_rejected_total", reason="connections_per_ip")
        assert refused == ATTACK_SOCKETS - PER_IP_MAX
        assert metric(node, "kestrel_rpc_open_connections") <= PER_IP_MAX + 1

        # The admitted ones are answered 408 once their body time is up, and closed.
        time.sleep(max(0.0, started + BODY_TIMEOUT_MS / 1000 + 1.0 - time.monotonic()))
        got = answers(socks)
        timed_out = [a for a in got if a.startswith("HTTP/1.1 408")]
        assert len(timed_out) == PER_IP_MAX, sorted(set(got))
        assert "held" not in got
        assert all(a.startswith("HTTP/1.1 429") or a in ("reset", "closed") or a in timed_out for a in got)
        assert metric(node, "kestrel_rpc_rejected_total", reason="body_timeout") == PER_IP_MAX
        wait_open_connections(node, at_most=1, timeout_s=2.0)
    finally:
        close_all(socks)


def test_stalled_headers_from_many_hosts_are_closed_in_time(start_node):
    """The same attack spread over 16 addresses (62 sockets each, under the per-IP limit): every
    place it takes is freed within the header time, and the healthy client still gets in."""
    node = start_node("--rpc-header-timeout-ms", str(HEADER_TIMEOUT_MS))
    sources = [f"127.0.0.{10 + i}" for i in range(16)]
    started = time.monotonic()
    socks = open_stalled(node.http_port, sources, 992, STALLED_HEADERS)
    try:
        # All admitted, once the accept loop has drained the kernel's queue.
        deadline = time.monotonic() + 1.0
        while metric(node, "kestrel_rpc_open_connections") < 992:
            assert time.monotonic() < deadline, metric(node, "kestrel_rpc_open_connections")
            time.sleep(0.05)
        latencies = timed_calls(node, "eth_blockNumber", [], 50, pause_s=0.005)
        assert p99(latencies) < HEALTHY_P99_MAX_S
        open_ = wait_open_connections(node, at_most=1, timeout_s=HEADER_TIMEOUT_MS / 1000 + 3.0)
        freed_after = time.monotonic() - started
        print(f"\n992 stalled headers closed after {freed_after:.1f}s ({open_:.0f} left open)")
        assert metric(node, "kestrel_rpc_rejected_total", reason="header_timeout") >= 992
        assert set(answers(socks)) <= {"closed", "reset"}
    finally:
        close_all(socks)
