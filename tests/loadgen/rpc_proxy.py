"""A JSON-RPC proxy that forwards everything to a node but swallows one transaction.

The `nth` eth_sendRawTransaction call it sees (a batch element or a single call) is not forwarded;
the client gets the transaction's hash back as if the node had accepted it (a node that silently
drops a transaction), or, with `refuse`, a final error (a refused transaction whose sender's later
nonces are stranded behind it). This checks that kestrel-loadgen notices either.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from e2e_util import tx_hash_of

FORWARD_TIMEOUT_S = 60.0


class SwallowingProxy:
    def __init__(self, upstream: str, nth: int, refuse: bool = False):
        self.upstream = upstream
        self.nth = nth
        self.refuse = refuse
        self.seen = 0
        self.swallowed: str | None = None
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                answer = proxy.handle(body)
                out = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "SwallowingProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _take(self, call: dict) -> dict | None:
        """The fake answer if this call is the one to swallow."""
        if call.get("method") != "eth_sendRawTransaction":
            return None
        with self._lock:
            self.seen += 1
            if self.seen != self.nth:
                return None
            raw = bytes.fromhex(call["params"][0].removeprefix("0x"))
            self.swallowed = tx_hash_of(raw)
        if self.refuse:
            return {"jsonrpc": "2.0", "id": call.get("id"),
                    "error": {"code": -32000, "message": "invalid sender"}}
        return {"jsonrpc": "2.0", "id": call.get("id"), "result": self.swallowed}

    def handle(self, body):
        calls = body if isinstance(body, list) else [body]
        faked = {}
        forward = []
        for i, call in enumerate(calls):
            fake = self._take(call)
            if fake is None:
                forward.append(call)
            else:
                faked[i] = fake
        answers = []
        if forward:
            upstream_body = forward if isinstance(body, list) else forward[0]
            resp = requests.post(self.upstream, json=upstream_body, timeout=FORWARD_TIMEOUT_S)
            answers = resp.json()
            if not isinstance(answers, list):
                answers = [answers]
        if not isinstance(body, list):
            return (list(faked.values()) or answers)[0]
        return answers + list(faked.values())
