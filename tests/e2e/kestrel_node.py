"""Start, stop and crash a `kestrel node --dev` process for the end-to-end tests.

Used by conftest.py (one node per test session) and test_crash.py (a node that is
killed with SIGKILL and restarted on the same datadir); `log_tails_hook` is the failure-log hook
of every test folder's conftest.

The binary is $KESTREL_BIN, or target/release/kestrel under the repository root.
Every node listens on free loopback ports, so tests can run next to a developer's node.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
CHAIN_ID = 1337

# Bounds on every wait (seconds).
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
RPC_TIMEOUT_S = 5.0
LOG_TAIL_LINES = 80

# The ten Hardhat/anvil dev accounts (mnemonic "test test ... junk"); public test keys.
DEV_KEYS = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
]
DEV_ADDRESSES = [
    "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
    "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
    "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
    "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65",
    "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc",
    "0x976EA74026E726554dB657fA54763abd0C3a0aa9",
    "0x14dC79964da2C08b23698B3D3cc7Ca32193d9955",
    "0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f",
    "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720",
]
DEV_BALANCE_WEI = 10_000 * 10**18

# Nodes started by this process, newest last; their logs are attached to failing tests.
NODES: list["KestrelNode"] = []


def kestrel_bin() -> Path:
    path = Path(os.environ.get("KESTREL_BIN", REPO_ROOT / "target" / "release" / "kestrel"))
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def loadgen_bin() -> Path:
    """$KESTREL_LOADGEN_BIN, or kestrel-loadgen next to the kestrel binary."""
    path = os.environ.get("KESTREL_LOADGEN_BIN")
    return Path(path) if path else kestrel_bin().parent / "kestrel-loadgen"


def run_loadgen(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """Runs kestrel-loadgen --quiet with `args` to its end; its output is captured."""
    binary = loadgen_bin()
    assert binary.exists(), f"{binary} not found: cargo build --release --bin kestrel-loadgen"
    return subprocess.run([str(binary), "--quiet", *args], capture_output=True, text=True,
                          timeout=timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


try:
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not glibc Linux: no parent-death signal
    _LIBC = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the test process dies (Linux).

    libc is loaded beforehand: the child of a threaded parent should only make the call."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def rpc(url: str, method: str, params: list | None = None, timeout: float = RPC_TIMEOUT_S) -> dict:
    """One JSON-RPC call; returns the whole response object (result or error)."""
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}
    resp = requests.post(url, json=body, timeout=timeout)
    return resp.json()


class KestrelNode:
    """One `kestrel node --dev` (or `--genesis`) process with its own ports and log file."""

    def __init__(self, datadir: Path, log_dir: Path, extra_args: list[str] | None = None,
                 genesis: Path | None = None):
        self.datadir = Path(datadir)
        self.log_dir = Path(log_dir)
        self.extra_args = list(extra_args or [])
        # A genesis file (e.g. kestrel-loadgen --genesis-out's) instead of --dev's accounts.
        self.genesis = genesis
        self.proc: subprocess.Popen | None = None
        self.http_port = 0
        self.metrics_port = 0
        self.starts = 0
        self.log_path: Path | None = None
        self._log_file = None
        NODES.append(self)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout: float = START_TIMEOUT_S, wait: bool = True) -> None:
        """Start on fresh free ports and (unless wait=False) wait until eth_chainId answers.

        Call from the main thread: the node gets SIGKILL when the thread that started it ends."""
        assert self.proc is None or self.proc.poll() is not None, "node already running"
        binary = kestrel_bin()
        if not binary.exists():
            raise FileNotFoundError(
                f"kestrel binary not found at {binary}: run `cargo build --release --bin kestrel` "
                "or set KESTREL_BIN"
            )
        # Fresh ports on every start: the old ones may be in TIME_WAIT after a SIGKILL.
        self.http_port = free_port()
        self.metrics_port = free_port()
        while self.metrics_port == self.http_port:
            self.metrics_port = free_port()
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"kestrel-{self.starts}.log"
        self._log_file = open(self.log_path, "wb")
        cmd = [
            str(binary), "node", *(["--dev"] if self.genesis is None else ["--genesis", str(self.genesis)]),
            "--datadir", str(self.datadir),
            "--http-addr", "127.0.0.1",
            "--http-port", str(self.http_port),
            "--metrics", f"127.0.0.1:{self.metrics_port}",
            *self.extra_args,
        ]
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("NO_COLOR", "1")  # plain text in the log files
        self._log_file.write(("$ " + " ".join(cmd) + "\n").encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            cmd, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=str(self.log_dir), env=env, preexec_fn=_die_with_parent,
        )
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        last_err: object = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"kestrel exited with code {self.proc.returncode} during start-up\n{self.log_tail()}"
                )
            try:
                out = rpc(self.url, "eth_chainId", timeout=1.0)
                if out.get("result") is not None:
                    assert int(out["result"], 16) == CHAIN_ID, out
                    return
                last_err = out
            except (requests.RequestException, ValueError) as e:
                last_err = e
            time.sleep(0.1)
        raise TimeoutError(
            f"kestrel did not answer eth_chainId within {timeout}s (last: {last_err})\n{self.log_tail()}"
        )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL: no chance to flush or clean up."""
        if self.running():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._close_log()

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Clean shutdown (SIGTERM or SIGINT); SIGKILL if it takes too long. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._close_log()
        return self.proc.returncode

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The end of the current run's log, after the end of the previous run's (if restarted)."""
        if self.log_path is None:
            return "(no node log)"
        parts = []
        if self.starts > 1:
            parts.append(_tail(self.log_dir / f"kestrel-{self.starts - 1}.log", lines // 4))
        parts.append(_tail(self.log_path, lines))
        return "\n".join(parts)


def node_starter(tmp_path: Path):
    """For a pytest fixture (`yield from node_starter(tmp_path)`): yields a function that starts
    a fresh dev node with extra flags; every node it started is stopped afterwards."""
    nodes: list[KestrelNode] = []

    def start(*extra_args: str) -> KestrelNode:
        base = tmp_path / f"node{len(nodes)}"
        n = KestrelNode(datadir=base / "data", log_dir=base, extra_args=list(extra_args))
        nodes.append(n)
        n.start()
        return n

    yield start
    for n in nodes:
        n.stop()


def log_tails_hook(title: str = "kestrel node log", extra_logs=None):
    """A `pytest_runtest_makereport` hook for a conftest (`pytest_runtest_makereport =
    log_tails_hook()`): a failing test gets the tail of every node's log attached to its report,
    as sections "<title> (<datadir>)", then the (title, text) sections `extra_logs()` returns."""
    import pytest  # here, not at the top: the helpers above also serve scripts

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item, call):
        outcome = yield
        report = outcome.get_result()
        if report.failed:
            for n in NODES:
                report.sections.append((f"{title} ({n.datadir})", n.log_tail()))
            for section in extra_logs() if extra_logs else ():
                report.sections.append(section)

    return pytest_runtest_makereport


def _tail(path: Path, lines: int) -> str:
    if not path.exists():
        return f"(no log at {path})"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join([f"--- last {min(lines, len(text))} lines of {path} ---", *text[-lines:]])
