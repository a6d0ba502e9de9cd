"""Start and stop a real Prometheus server (the Debian package's /usr/bin/prometheus) for the
metrics tests, and query its HTTP API. Every wait is bounded.

The server gets a temporary config that scrapes one Kestrel node every second and loads the alert
rules from deploy/prometheus/alerts.yml. It also gets a temporary TSDB directory and a free
loopback port.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import requests

from metrics_util import ALERTS_YML  # first: puts tests/e2e on sys.path
from kestrel_node import _die_with_parent, _tail, free_port

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 5.0
START_ATTEMPTS = 3  # a free port can be taken between free_port() and the bind


def prometheus_bin() -> str:
    path = os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(path).exists():
        raise FileNotFoundError(
            f"prometheus not found at {path}: run scripts/setup.sh (Debian package `prometheus`)"
        )
    return path


def promtool_bin() -> str:
    path = os.environ.get("PROMTOOL_BIN") or shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(path).exists():
        raise FileNotFoundError(
            f"promtool not found at {path}: run scripts/setup.sh (Debian package `prometheus`)"
        )
    return path


class PrometheusServer:
    """One Prometheus process scraping `target` ("host:port") as job `kestrel`."""

    def __init__(self, target: str, workdir: Path, scrape_interval: str = "1s"):
        self.target = target
        self.workdir = Path(workdir)
        self.scrape_interval = scrape_interval
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "prometheus.log"
        self.config_path = self.workdir / "prometheus.yml"
        self._log_file = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> None:
        self.config_path.write_text(
            "global:\n"
            f"  scrape_interval: {self.scrape_interval}\n"
            f"  scrape_timeout: {self.scrape_interval}\n"
            f"  evaluation_interval: {self.scrape_interval}\n"
            "rule_files:\n"
            f"  - {ALERTS_YML}\n"
            "scrape_configs:\n"
            "  - job_name: kestrel\n"
            "    static_configs:\n"
            f"      - targets: ['{self.target}']\n"
        )

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        last: Exception | None = None
        for _ in range(START_ATTEMPTS):
            try:
                self._start_once()
                return
            except RuntimeError as e:  # exited early, e.g. the port was taken
                last = e
        raise RuntimeError(f"prometheus did not start in {START_ATTEMPTS} attempts: {last}")

    def _start_once(self) -> None:
        self.port = free_port()
        tsdb = self.workdir / "tsdb"
        shutil.rmtree(tsdb, ignore_errors=True)
        cmd = [
            prometheus_bin(),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={tsdb}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1d",
        ]
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(("$ " + " ".join(cmd) + "\n").encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            cmd, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=str(self.workdir), preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        last_err: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self._close_log()
                raise RuntimeError(f"prometheus exited with code {code}\n{self.log_tail()}")
            try:
                r = requests.get(f"{self.url}/-/ready", timeout=1.0)
                if r.status_code == 200:
                    return
                last_err = f"HTTP {r.status_code}"
            except requests.RequestException as e:
                last_err = e
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(
            f"prometheus not ready within {START_TIMEOUT_S}s (last: {last_err})\n{self.log_tail()}"
        )

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
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

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)

    # --- HTTP API ---------------------------------------------------------------------------

    def api(self, path: str, params: dict | None = None) -> dict:
        """GET /api/v1/<path>; returns `data`, raising on an error status."""
        r = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=HTTP_TIMEOUT_S)
        body = r.json()
        if body.get("status") != "success":
            raise PromQueryError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant query; returns the result list (vector) or a one-element list (scalar)."""
        data = self.api("query", {"query": expr})
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def value(self, expr: str) -> float | None:
        """The value of a one-series query, or None while it has no data."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, f"{expr} returned {len(result)} series: {result}"
        return float(result[0]["value"][1])

    def wait_for(self, expr: str, predicate, timeout: float, what: str) -> float:
        """Polls `expr` until predicate(value) holds; returns the value."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.value(expr)
                if last is not None and predicate(last):
                    return last
            except (requests.RequestException, ValueError) as e:
                last = e
            time.sleep(0.5)
        raise TimeoutError(f"{what}: `{expr}` was {last!r} after {timeout}s\n{self.log_tail(20)}")


class PromQueryError(Exception):
    pass
