// Compiles contracts/Token.sol with solc-js (the npm `solc` package: a wasm build that
// works offline) and prints {abi, bytecode, deployedBytecode, compiler} as JSON.
//
//   node compile.mjs              # JSON on stdout
//   node compile.mjs --out FILE   # JSON written to FILE
//
// Also importable: `import { compileToken } from './compile.mjs'`.
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import solc from 'solc';

const HERE = dirname(fileURLToPath(import.meta.url));
export const EVM_VERSION = 'prague';

export function compileToken() {
  const source = readFileSync(join(HERE, 'contracts', 'Token.sol'), 'utf8');
  const input = {
    language: 'Solidity',
    sources: { 'Token.sol': { content: source } },
    settings: {
      evmVersion: EVM_VERSION,
      optimizer: { enabled: true, runs: 200 },
      outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const errors = (output.errors ?? []).filter((e) => e.severity === 'error');
  if (errors.length > 0) {
    throw new Error(`solc failed:\n${errors.map((e) => e.formattedMessage).join('\n')}`);
  }
  const contract = output.contracts['Token.sol'].Token;
  return {
    abi: contract.abi,
    bytecode: `0x${contract.evm.bytecode.object}`,
    deployedBytecode: `0x${contract.evm.deployedBytecode.object}`,
    compiler: solc.version(),
    evmVersion: EVM_VERSION,
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const artifact = JSON.stringify(compileToken(), null, 2);
  const outIdx = process.argv.indexOf('--out');
  if (outIdx !== -1) {
    writeFileSync(process.argv[outIdx + 1], `${artifact}\n`);
  } else {
    process.stdout.write(`${artifact}\n`);
  }
}
