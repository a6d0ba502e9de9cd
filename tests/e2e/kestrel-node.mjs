// Starts a `kestrel node --dev` on free loopback ports with a temporary datadir, for the
// JavaScript end-to-end tests. The binary is $KESTREL_BIN or target/release/kestrel under the
// repository root. Mirrors kestrel_node.py.
import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = resolve(HERE, '..', '..');
export const CHAIN_ID = 1337;
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 15_000;
const LOG_TAIL_LINES = 80;

// The first three Hardhat/anvil dev accounts (mnemonic "test test ... junk"); public test keys.
export const DEV_KEYS = [
  '0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80',
  '0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d',
  '0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a',
];

export function kestrelBin() {
  const bin = process.env.KESTREL_BIN ?? join(REPO_ROOT, 'target', 'release', 'kestrel');
  return isAbsolute(bin) ? bin : join(REPO_ROOT, bin);
}

export function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function rpc(url, method, params = []) {
  const resp = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method, params }),
    signal: AbortSignal.timeout(1_000),
  });
  return resp.json();
}

/** Start a node; resolves once eth_chainId answers 0x539. */
export async function startNode() {
  const bin = kestrelBin();
  if (!existsSync(bin)) {
    throw new Error(`kestrel binary not found at ${bin}: run cargo build --release --bin kestrel or set KESTREL_BIN`);
  }
  const dir = mkdtempSync(join(tmpdir(), 'kestrel-viem-'));
  const httpPort = await freePort();
  let metricsPort = await freePort();
  while (metricsPort === httpPort) metricsPort = await freePort();
  let wsPort = await freePort();
  while (wsPort === httpPort || wsPort === metricsPort) wsPort = await freePort();
  const logPath = join(dir, 'kestrel.log');
  const log = createWriteStream(logPath);
  const args = ['node', '--dev', '--datadir', join(dir, 'data'), '--http-addr', '127.0.0.1',
    '--http-port', String(httpPort), '--metrics', `127.0.0.1:${metricsPort}`, '--ws-port', String(wsPort)];
  const child = spawn(bin, args, {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { RUST_LOG: 'info', RUST_BACKTRACE: '1', NO_COLOR: '1', ...process.env },
  });
  child.stdout.pipe(log);
  child.stderr.pipe(log);
  let exited = null;
  const exitedP = new Promise((r) => child.on('exit', (code, signal) => { exited = { code, signal }; r(); }));
  // Never leave a node behind, whatever happens to this process.
  const killOnExit = () => { if (exited === null) child.kill('SIGKILL'); };
  process.on('exit', killOnExit);

  const url = `http://127.0.0.1:${httpPort}`;
  const logTail = () => {
    try {
      const lines = readFileSync(logPath, 'utf8').split('\n');
      return `--- last ${LOG_TAIL_LINES} lines of ${logPath} ---\n${lines.slice(-LOG_TAIL_LINES).join('\n')}`;
    } catch {
      return '(no node log)';
    }
  };
  const stop = async ({ keep = false } = {}) => {
    if (exited === null) {
      child.kill('SIGTERM');
      await Promise.race([exitedP, sleep(STOP_TIMEOUT_MS)]);
      if (exited === null) {
        child.kill('SIGKILL');
        await exitedP;
      }
    }
    process.off('exit', killOnExit);
    log.end();
    if (!keep) rmSync(dir, { recursive: true, force: true });
    return exited;
  };

  const deadline = Date.now() + START_TIMEOUT_MS;
  let last;
  while (Date.now() < deadline) {
    if (exited !== null) {
      throw new Error(`kestrel exited during start-up (${JSON.stringify(exited)})\n${logTail()}`);
    }
    try {
      const out = await rpc(url, 'eth_chainId');
      if (out.result !== undefined) {
        if (Number(out.result) !== CHAIN_ID) throw new Error(`unexpected chain id ${out.result}`);
        return {
          url, wsUrl: `ws://127.0.0.1:${wsPort}`, metricsUrl: `http://127.0.0.1:${metricsPort}/metrics`, dir, logTail, stop,
        };
      }
      last = out;
    } catch (e) {
      last = e;
    }
    await sleep(100);
  }
  const tail = logTail();
  await stop({ keep: true });
  throw new Error(`kestrel did not answer eth_chainId within ${START_TIMEOUT_MS} ms (last: ${last})\n${tail}`);
}
