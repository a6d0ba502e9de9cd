// End-to-end tests of a `kestrel node --dev` through viem (local signing, eth_sendRawTransaction).
// Run from tests/e2e: `node --test` (after `npm ci` and `cargo build --release --bin kestrel`).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  ContractFunctionRevertedError,
  createPublicClient,
  createWalletClient,
  defineChain,
  http,
  parseAbiItem,
  parseEther,
  parseGwei,
  webSocket,
} from 'viem';
import { generatePrivateKey, privateKeyToAccount } from 'viem/accounts';

import { compileToken } from './compile.mjs';
import { CHAIN_ID, DEV_KEYS, startNode } from './kestrel-node.mjs';

const RECEIPT_TIMEOUT_MS = 30_000;
const POLLING_INTERVAL_MS = 100;
const SUPPLY = parseEther('1000000');
const transferEvent = parseAbiItem('event Transfer(address indexed from, address indexed to, uint256 value)');

let node;
let chain;
let pub;
let artifact;
let token; // deployed address
const [deployer, alice, bob] = DEV_KEYS.map((k) => privateKeyToAccount(k));

function wallet(account) {
  return createWalletClient({ account, chain, transport: http(node.url), pollingInterval: POLLING_INTERVAL_MS });
}

const receiptOf = (hash) =>
  pub.waitForTransactionReceipt({ hash, timeout: RECEIPT_TIMEOUT_MS, pollingInterval: POLLING_INTERVAL_MS });

// Every test body goes through here: on failure the node's log tail is printed.
function e2e(name, fn) {
  test(name, async (t) => {
    try {
      await fn(t);
    } catch (err) {
      console.error(`\n${name} failed; ${node ? node.logTail() : '(node not started)'}`);
      throw err;
    }
  });
}

before(async () => {
  artifact = compileToken();
  node = await startNode();
  chain = defineChain({
    id: CHAIN_ID,
    name: 'Kestrel dev',
    nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 },
    rpcUrls: { default: { http: [node.url] } },
  });
  pub = createPublicClient({ chain, transport: http(node.url), pollingInterval: POLLING_INTERVAL_MS });
});

after(async () => {
  if (node) await node.stop();
});

e2e('chain id and blocks', async () => {
  assert.equal(await pub.getChainId(), CHAIN_ID);
  const start = await pub.getBlockNumber();
  const deadline = Date.now() + 10_000;
  while ((await pub.getBlockNumber()) < start + 2n) {
    assert.ok(Date.now() < deadline, 'no new block within 10 s');
    await new Promise((r) => setTimeout(r, 100));
  }
  const genesis = await pub.getBlock({ blockNumber: 0n });
  assert.equal(genesis.baseFeePerGas, parseGwei('1'));
  assert.equal(await pub.getBalance({ address: bob.address }), parseEther('10000'));
});

async function checkTransfer(sendArgs, expectType) {
  const to = privateKeyToAccount(generatePrivateKey()).address;
  const value = parseEther('1.5') + 3n;
  const before = await pub.getBalance({ address: alice.address });
  const nonce = await pub.getTransactionCount({ address: alice.address });
  const hash = await wallet(alice).sendTransaction({ to, value, ...sendArgs });
  const receipt = await receiptOf(hash);
  assert.equal(receipt.status, 'success');
  assert.equal(receipt.type, expectType);
  assert.equal(receipt.gasUsed, 21_000n);
  assert.equal(await pub.getBalance({ address: to }), value);
  assert.equal(
    await pub.getBalance({ address: alice.address }),
    before - value - receipt.gasUsed * receipt.effectiveGasPrice,
  );
  assert.equal(await pub.getTransactionCount({ address: alice.address }), nonce + 1);
  const tx = await pub.getTransaction({ hash });
  assert.equal(tx.type, expectType);
  assert.equal(tx.blockHash, receipt.blockHash);
  const block = await pub.getBlock({ blockNumber: receipt.blockNumber });
  assert.equal(block.hash, receipt.blockHash);
  assert.ok(block.transactions.includes(hash));
  return { receipt, block, tx };
}

e2e('send ETH with an EIP-1559 transaction', async () => {
  const { receipt, block, tx } = await checkTransfer({}, 'eip1559');
  assert.equal(receipt.effectiveGasPrice, min(tx.maxFeePerGas, block.baseFeePerGas + tx.maxPriorityFeePerGas));
});

e2e('send ETH with a legacy transaction', async () => {
  const gasPrice = await pub.getGasPrice();
  const { receipt } = await checkTransfer({ type: 'legacy', gasPrice }, 'legacy');
  assert.equal(receipt.effectiveGasPrice, gasPrice);
});

e2e('estimate gas for a transfer', async () => {
  const gas = await pub.estimateGas({ account: alice, to: bob.address, value: 1n });
  assert.ok(gas >= 21_000n && gas < 30_000n, `estimate ${gas}`); // geth answers exactly 21000
});

e2e('deploy the ERC-20', async () => {
  const hash = await wallet(deployer).deployContract({
    abi: artifact.abi,
    bytecode: artifact.bytecode,
    args: ['Kestrel Token', 'KST', SUPPLY],
  });
  const receipt = await receiptOf(hash);
  assert.equal(receipt.status, 'success');
  assert.ok(receipt.contractAddress);
  token = receipt.contractAddress;
  assert.equal(await pub.getCode({ address: token }), artifact.deployedBytecode);
  const read = (functionName, args = []) => pub.readContract({ address: token, abi: artifact.abi, functionName, args });
  assert.equal(await read('name'), 'Kestrel Token');
  assert.equal(await read('symbol'), 'KST');
  assert.equal(await read('decimals'), 18);
  assert.equal(await read('totalSupply'), SUPPLY);
  assert.equal(await read('balanceOf', [deployer.address]), SUPPLY);
});

e2e('transfer tokens, read balances and events', async () => {
  assert.ok(token, 'deploy test must run first');
  const amount = parseEther('250');
  const gas = await pub.estimateContractGas({
    address: token, abi: artifact.abi, functionName: 'transfer', args: [bob.address, amount], account: deployer,
  });
  assert.ok(gas > 21_000n && gas < 200_000n, `gas estimate ${gas}`);
  const { request } = await pub.simulateContract({
    address: token, abi: artifact.abi, functionName: 'transfer', args: [bob.address, amount], account: deployer,
  });
  const hash = await wallet(deployer).writeContract(request);
  const receipt = await receiptOf(hash);
  assert.equal(receipt.status, 'success');
  assert.ok(receipt.gasUsed <= gas);
  assert.equal(receipt.logs.length, 1);
  assert.equal(receipt.logs[0].address.toLowerCase(), token.toLowerCase());

  const balanceOf = (a) => pub.readContract({ address: token, abi: artifact.abi, functionName: 'balanceOf', args: [a] });
  assert.equal(await balanceOf(bob.address), amount);
  assert.equal(await balanceOf(deployer.address), SUPPLY - amount);

  const events = await pub.getContractEvents({
    address: token, abi: artifact.abi, eventName: 'Transfer',
    fromBlock: receipt.blockNumber, toBlock: receipt.blockNumber,
  });
  assert.equal(events.length, 1);
  assert.equal(events[0].transactionHash, hash);
  assert.deepEqual(events[0].args, { from: deployer.address, to: bob.address, value: amount });

  const logs = await pub.getLogs({
    address: token, event: transferEvent, args: { to: bob.address }, fromBlock: 0n, toBlock: 'latest',
  });
  assert.deepEqual(logs.map((l) => l.transactionHash), [hash]);
  const all = await pub.getLogs({ address: token, event: transferEvent, fromBlock: 0n, toBlock: 'latest' });
  assert.equal(all.length, 2); // mint + this transfer
});

e2e('watchBlocks and watchContractEvent over a webSocket transport', async () => {
  assert.ok(token, 'deploy test must run first');
  const ws = createPublicClient({ chain, transport: webSocket(node.wsUrl) });
  const blocks = [];
  const events = [];
  const unwatchBlocks = ws.watchBlocks({ onBlock: (b) => blocks.push(b) });
  const unwatchEvents = ws.watchContractEvent({
    address: token, abi: artifact.abi, eventName: 'Transfer', onLogs: (logs) => events.push(...logs),
  });
  // Let both subscriptions be set up before the transfers.
  await new Promise((r) => setTimeout(r, 500));
  const to = privateKeyToAccount(generatePrivateKey()).address;
  const hashes = [];
  for (const value of [1n, 2n, 3n]) {
    hashes.push(await wallet(deployer).writeContract({
      address: token, abi: artifact.abi, functionName: 'transfer', args: [to, value], account: deployer,
    }));
  }
  for (const hash of hashes) await receiptOf(hash);
  const deadline = Date.now() + 30_000;
  while (events.length < 3 || blocks.length < 5) {
    assert.ok(Date.now() < deadline, `${events.length} of 3 events, ${blocks.length} of 5 blocks within 30 s`);
    await new Promise((r) => setTimeout(r, 100));
  }
  unwatchBlocks();
  unwatchEvents();
  await ws.transport.getRpcClient().then((c) => c.close());
  assert.deepEqual(events.map((e) => e.transactionHash), hashes);
  assert.deepEqual(events.map((e) => e.args.value), [1n, 2n, 3n]);
  const numbers = blocks.map((b) => b.number);
  numbers.forEach((n, i) => assert.equal(n, numbers[0] + BigInt(i), `blocks in order: ${numbers}`));
  for (const b of blocks) assert.equal((await pub.getBlock({ blockNumber: b.number })).hash, b.hash);
});

e2e('a reverting call surfaces "insufficient balance"', async () => {
  assert.ok(token, 'deploy test must run first');
  const args = [deployer.address, parseEther('1')];
  const poor = privateKeyToAccount(generatePrivateKey()); // no tokens, no ETH
  await assert.rejects(
    pub.simulateContract({ address: token, abi: artifact.abi, functionName: 'transfer', args, account: poor }),
    (err) => {
      assert.match(err.message, /insufficient balance/);
      const revert = err.walk((e) => e instanceof ContractFunctionRevertedError);
      assert.ok(revert, `not a ContractFunctionRevertedError: ${err}`);
      assert.equal(revert.reason, 'insufficient balance');
      return true;
    },
  );
  await assert.rejects(
    pub.estimateContractGas({ address: token, abi: artifact.abi, functionName: 'transfer', args, account: alice }),
    /insufficient balance/,
  );
  // writeContract estimates first, so nothing is sent.
  const nonce = await pub.getTransactionCount({ address: alice.address });
  await assert.rejects(
    wallet(alice).writeContract({ address: token, abi: artifact.abi, functionName: 'transfer', args }),
    /insufficient balance/,
  );
  assert.equal(await pub.getTransactionCount({ address: alice.address }), nonce);
});

e2e('a transaction with the wrong chain id is refused', async () => {
  const other = defineChain({ ...chain, id: 1 });
  const client = createWalletClient({ account: alice, chain: other, transport: http(node.url) });
  // viem checks the chain id itself unless told not to (chain: null skips the check).
  const request = await client.prepareTransactionRequest({ to: bob.address, value: 1n, chain: other });
  const serialized = await alice.signTransaction({ ...request, chainId: 1 });
  await assert.rejects(client.sendRawTransaction({ serializedTransaction: serialized }), /invalid chain id/);
});

function min(a, b) {
  return a < b ? a : b;
}
