"""A testnet of real `kestrel node` validators, written by `kestrel init-testnet`.

Each validator runs from its own config (validator-<i>/config.toml) with its own datadir and log
file; ports are free loopback ports chosen at init. With `full_nodes=K`, K full nodes
(full-<j>/config.toml, `role = "full"`) follow them on loopback. With `Namespaces`, each validator runs in a
network namespace of its own instead, behind a veth pair on a shared bridge whose egress `tc netem`
delays by 20-50 ms (or not delayed, with `delay=None`, for kernels without sch_netem). Helpers read blocks and receipts over JSON-RPC. Every wait is bounded.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from eth_account import Account

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))

from kestrel_node import DEV_KEYS, KestrelNode, _die_with_parent, kestrel_bin  # noqa: E402  (by path)

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 2.0
PORT_BASE_TRIES = 200
PORT_RANGE_LOW, PORT_RANGE_HIGH = 20_000, 32_000
CHAIN_ID = 1337
TRANSFER_GAS = 21_000
MAX_FEE_WEI = 20 * 10**9
TIP_WEI = 10**9


def _free_range(n: int, taken: set[int]) -> int:
    """A base port such that base..base+n-1 are free on 127.0.0.1 and not in `taken`."""
    for _ in range(PORT_BASE_TRIES):
        # Below the kernel's ephemeral range, where client connections leave ports in TIME_WAIT.
        base = random.randrange(PORT_RANGE_LOW, PORT_RANGE_HIGH)
        ports = range(base, base + n)
        if base + n > 65535 or taken.intersection(ports):
            continue
        sockets = []
        try:
            for p in ports:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sockets.append(s)
                s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        taken.update(ports)
        return base
    raise RuntimeError(f"no {n} consecutive free ports found")


class Validator(KestrelNode):
    """One validator process of the testnet (reuses the e2e node's log handling); a full node is
    one too, whose `index` is its name ("full-0")."""

    def __init__(self, index: int | str, directory: Path, rpc_port: int, extra_args: list[str],
                 host: str = "127.0.0.1", prefix: list[str] | None = None):
        super().__init__(datadir=directory / "data", log_dir=directory / "logs", extra_args=extra_args)
        self.index = index
        self.directory = directory
        self.http_port = rpc_port
        self.host = host
        self.prefix = list(prefix or [])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def start(self, timeout: float = START_TIMEOUT_S, wait: bool = True) -> None:
        assert not self.running(), f"validator {self.index} already running"
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"kestrel-{self.starts}.log"
        self._log_file = open(self.log_path, "wb")
        cmd = [*self.prefix, str(kestrel_bin()), "node", "--config", str(self.directory / "config.toml"),
               *self.extra_args]
        self._log_file.write(("$ " + " ".join(cmd) + "\n").encode())
        self._log_file.flush()
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("NO_COLOR", "1")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=str(self.directory), env=env, preexec_fn=_die_with_parent,
        )
        if wait:
            self.wait_ready(timeout)

    def call(self, method: str, params: list | None = None):
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}
        out = requests.post(self.url, json=body, timeout=HTTP_TIMEOUT_S).json()
        if "error" in out:
            raise RuntimeError(f"validator {self.index} {method}: {out['error']}")
        return out["result"]

    def head(self) -> int:
        return int(self.call("eth_blockNumber"), 16)

    def block(self, number: int) -> dict:
        return self.call("eth_getBlockByNumber", [hex(number), False])

    def receipt(self, tx_hash: str) -> dict | None:
        return self.call("eth_getTransactionReceipt", [tx_hash])

    def metric(self, name: str) -> float | None:
        """The value of an unlabelled series on the validator's Prometheus endpoint."""
        text = requests.get(self.metrics_url, timeout=HTTP_TIMEOUT_S).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None


class Namespaces:
    """N network namespaces, each with a veth pair to one bridge in the root namespace (which has
    an address too, so the test reaches every validator), each egress delayed by netem unless
    `delay` is None."""

    def __init__(self, n: int, delay: str | None = "35ms 15ms"):
        tag = f"kt{os.getpid() % 10000}"
        self.bridge = f"{tag}br"
        self.names = [f"{tag}ns{i}" for i in range(n)]
        self.subnet = f"10.{random.randrange(100, 250)}.{random.randrange(0, 250)}"
        self.ips = [f"{self.subnet}.{i + 1}" for i in range(n)]
        self.delay = delay

    @staticmethod
    def _run(*cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True, timeout=10)

    def setup(self) -> None:
        """Creates everything; on failure removes what was made and raises CalledProcessError."""
        try:
            self._run("ip", "link", "add", self.bridge, "type", "bridge")
            self._run("ip", "addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
            self._run("ip", "link", "set", self.bridge, "up")
            for i, (ns, ip) in enumerate(zip(self.names, self.ips)):
                host, peer = f"{self.bridge}h{i}", f"{self.bridge}p{i}"
                self._run("ip", "netns", "add", ns)
                self._run("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
                self._run("ip", "link", "set", host, "master", self.bridge)
                self._run("ip", "link", "set", host, "up")
                self._run("ip", "link", "set", peer, "netns", ns)
                self._run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", peer)
                self._run("ip", "-n", ns, "link", "set", peer, "up")
                self._run("ip", "-n", ns, "link", "set", "lo", "up")
                if self.delay is not None:
                    self._run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", peer, "root",
                              "netem", "delay", *self.delay.split())
        except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired):
            self.cleanup()
            raise

    def cleanup(self) -> None:
        for ns in self.names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=10)


class Testnet:
    __test__ = False  # not a pytest class, despite the name
    def __init__(self, root: Path, n: int, extra_args: list[str], namespaces: Namespaces | None = None,
                 full_nodes: int = 0, init_args: list[str] | None = None):
        assert namespaces is None or full_nodes == 0, "full nodes run on loopback only"
        taken: set[int] = set()
        p2p = _free_range(n, taken)
        rpc, metrics = (_free_range(n + full_nodes, taken) for _ in range(2))
        subprocess.run(
            [str(kestrel_bin()), "init-testnet", "--validators", str(n), "--out", str(root),
             "--full-nodes", str(full_nodes),
             "--base-p2p-port", str(p2p), "--base-rpc-port", str(rpc),
             "--base-metrics-port", str(metrics), "--chain-id", str(CHAIN_ID),
             # geth's light scrypt for the keystores: validators restart often here.
             "--scrypt-light", *(init_args or [])],
            check=True, capture_output=True, timeout=60,
        )
        self.root = root
        if namespaces is None:
            self.validators = [
                Validator(i, root / f"validator-{i}", rpc + i, extra_args) for i in range(n)
            ]
        else:
            # Listen on the namespace's address; peers in genesis order, minus oneself.
            addrs = [f"{namespaces.ips[i]}:{p2p + i}" for i in range(n)]
            self.validators = [
                Validator(
                    i, root / f"validator-{i}", rpc + i,
                    [*extra_args, "--p2p-listen", addrs[i],
                     "--p2p-peers", ",".join(a for j, a in enumerate(addrs) if j != i),
                     "--http-addr", namespaces.ips[i], "--metrics", f"{namespaces.ips[i]}:{metrics + i}"],
                    host=namespaces.ips[i], prefix=["ip", "netns", "exec", namespaces.names[i]],
                )
                for i in range(n)
            ]
        for i, v in enumerate(self.validators):
            v.metrics_port = metrics + i
        self.full_nodes = [
            Validator(f"full-{j}", root / f"full-{j}", rpc + n + j, extra_args) for j in range(full_nodes)
        ]
        for j, f in enumerate(self.full_nodes):
            f.metrics_port = metrics + n + j

    def __getitem__(self, i: int) -> Validator:
        return self.validators[i]

    def start_all(self) -> None:
        nodes = self.validators + self.full_nodes
        for v in nodes:
            v.start(wait=False)
        for v in nodes:
            v.wait_ready()

    def stop_all(self) -> list[int | None]:
        return [v.stop(signal.SIGTERM) for v in self.validators + self.full_nodes]

    def running(self) -> list[Validator]:
        return [v for v in self.validators if v.running()]


def wait_until(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (requests.RequestException, RuntimeError, ValueError) as e:
            last = e
        time.sleep(poll)
    raise TimeoutError(f"{what} not within {timeout}s (last: {last!r})")


def assert_agree(validators, up_to: int, timeout: float = 30.0) -> None:
    """Every node has blocks 1..up_to, identical in hash, state root and receipts root."""
    for v in validators:
        wait_until(lambda: v.head() >= up_to, timeout, f"validator {v.index} at {up_to}")
    for n in range(1, up_to + 1):
        blocks = [v.block(n) for v in validators]
        fields = {(b["hash"], b["stateRoot"], b["receiptsRoot"]) for b in blocks}
        assert len(fields) == 1, f"block {n} differs: {fields}"


def documented_metrics() -> set[str]:
    """Metric names in the first column of docs/metrics.md's tables."""
    docs = HERE.parents[1] / "docs" / "metrics.md"
    return set(re.findall(r"^\|\s*`(kestrel_[a-z0-9_]+)`\s*\|", docs.read_text(), re.M))


def exported_metrics(v) -> set[str]:
    """Metric families on the node's endpoint."""
    text = requests.get(v.metrics_url, timeout=5).text
    return set(re.findall(r"^# TYPE (kestrel_[a-z0-9_]+) ", text, re.M))


def series(v, name: str) -> dict[str, float]:
    """Every sample of `name` on the node's endpoint, by its label string."""
    text = requests.get(v.metrics_url, timeout=5).text
    return {m.group(1) or "": float(m.group(2))
            for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M)}


class Sender:
    """Signs transfers from one dev account with locally tracked nonces."""

    def __init__(self, key_index: int):
        self.account = Account.from_key(DEV_KEYS[key_index])
        self.nonce = 0

    def transfer(self, to: str, value: int) -> bytes:
        tx = {
            "chainId": CHAIN_ID, "nonce": self.nonce, "gas": TRANSFER_GAS,
            "maxFeePerGas": MAX_FEE_WEI, "maxPriorityFeePerGas": TIP_WEI,
            "to": to, "value": value,
        }
        self.nonce += 1
        return bytes(self.account.sign_transaction(tx).raw_transaction)
