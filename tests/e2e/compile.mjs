// Compiles contracts/Token.sol (or another contract of contracts/) with solc-js (the npm `solc`
// package: a wasm build that works offline) and prints {abi, bytecode, deployedBytecode,
// compiler} as JSON.
//
//   node compile.mjs                       # Token, JSON on stdout
//   node compile.mjs --contract Pair       # contracts/Pair.sol
//   node compile.mjs --contract Tracing --all   # every contract of contracts/Tracing.sol, by name
//   node compile.mjs --out FILE            # JSON written to FILE
//
// Also importable: `import { compileToken, compileContract } from './compile.mjs'`.
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import solc from 'solc';

const HERE = dirname(fileURLToPath(import.meta.url));
export const EVM_VERSION = 'prague';

export function compileToken() {
  return compileContract('Token');
}

/// Compiles contracts/<name>.sol; imports resolve inside contracts/.
export function compileContract(name) {
  return compileFile(name)[name];
}

/// Every contract of contracts/<file>.sol, by name.
export function compileFile(file) {
  const name = file;
  const read = (file) => readFileSync(join(HERE, 'contracts', file), 'utf8');
  const input = {
    language: 'Solidity',
    sources: { [`${name}.sol`]: { content: read(`${name}.sol`) } },
    settings: {
      evmVersion: EVM_VERSION,
      optimizer: { enabled: true, runs: 200 },
      outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
    },
  };
  const findImports = (path) => ({ contents: read(path.replace(/^\.\//, '')) });
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const errors = (output.errors ?? []).filter((e) => e.severity === 'error');
  if (errors.length > 0) {
    throw new Error(`solc failed:\n${errors.map((e) => e.formattedMessage).join('\n')}`);
  }
  return Object.fromEntries(
    Object.entries(output.contracts[`${name}.sol`]).map(([contractName, contract]) => [
      contractName,
      {
        abi: contract.abi,
        bytecode: `0x${contract.evm.bytecode.object}`,
        deployedBytecode: `0x${contract.evm.deployedBytecode.object}`,
        compiler: solc.version(),
        evmVersion: EVM_VERSION,
      },
    ]),
  );
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const nameIdx = process.argv.indexOf('--contract');
  const name = nameIdx === -1 ? 'Token' : process.argv[nameIdx + 1];
  const compiled = process.argv.includes('--all') ? compileFile(name) : compileContract(name);
  const artifact = JSON.stringify(compiled, null, 2);
  const outIdx = process.argv.indexOf('--out');
  if (outIdx !== -1) {
    writeFileSync(process.argv[outIdx + 1], `${artifact}\n`);
  } else {
    process.stdout.write(`${artifact}\n`);
  }
}
