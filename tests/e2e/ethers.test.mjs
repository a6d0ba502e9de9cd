// ethers v6 against `kestrel node --dev`: a WebSocketProvider's block and event listeners (over
// `eth_subscribe`) see every block and every Transfer of a scripted run exactly once and in order.
// Run from tests/e2e: `node --test` (after `npm ci` and `cargo build --release --bin kestrel`).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { ContractFactory, JsonRpcProvider, Wallet, WebSocketProvider, Contract } from 'ethers';

import { compileToken } from './compile.mjs';
import { DEV_KEYS, startNode } from './kestrel-node.mjs';

const WAIT_MS = 30_000;
let node;

before(async () => {
  node = await startNode();
});

after(async () => {
  if (node) await node.stop();
});

async function until(what, done) {
  const deadline = Date.now() + WAIT_MS;
  while (!done()) {
    assert.ok(Date.now() < deadline, `${what} within ${WAIT_MS / 1000} s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('WebSocketProvider block and Transfer listeners', async (t) => {
  try {
    const artifact = compileToken();
    const http = new JsonRpcProvider(node.url, undefined, { polling: true, pollingInterval: 100 });
    const deployer = new Wallet(DEV_KEYS[0], http);
    const factory = new ContractFactory(artifact.abi, artifact.bytecode, deployer);
    const token = await factory.deploy('Ethers Token', 'ETK', 10n ** 24n);
    await token.waitForDeployment();
    const address = await token.getAddress();

    const ws = new WebSocketProvider(node.wsUrl);
    const blocks = [];
    const transfers = [];
    await ws.on('block', (n) => blocks.push(n));
    const watched = new Contract(address, artifact.abi, ws);
    await watched.on('Transfer', (from, to, value, ev) => transfers.push({ value, hash: ev.log.transactionHash }));
    await new Promise((r) => setTimeout(r, 500));

    const to = Wallet.createRandom().address;
    const hashes = [];
    let nonce = await http.getTransactionCount(deployer.address, 'pending');
    for (const value of [5n, 6n, 7n]) {
      const tx = await token.transfer(to, value, { nonce: nonce++ });
      hashes.push(tx.hash);
    }
    for (const h of hashes) await http.waitForTransaction(h, 1, WAIT_MS);
    await until('3 transfers and 5 blocks', () => transfers.length >= 3 && blocks.length >= 5);
    await ws.destroy();
    http.destroy();

    assert.deepEqual(transfers.map((e) => e.hash), hashes);
    assert.deepEqual(transfers.map((e) => e.value), [5n, 6n, 7n]);
    blocks.forEach((n, i) => assert.equal(n, blocks[0] + i, `blocks in order: ${blocks}`));
  } catch (err) {
    console.error(`\n${t.name} failed; ${node ? node.logTail() : '(node not started)'}`);
    throw err;
  }
});
