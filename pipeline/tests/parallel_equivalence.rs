//! The parallel executor must produce exactly what the sequential executor produces: the same
//! state changes, receipts (logs, cumulative gas), included and dropped transactions and gas, on
//! random blocks of real signed transactions with many kinds of conflicts.
//!
//! Cases per run: `PROPTEST_CASES` (default 64); proptest prints the failing input (and persists
//! its seed) on failure.

use alloy_consensus::{Header, TxEip1559};
use alloy_primitives::{Address, Bytes, TxKind, U256};
use kestrel_benches::{
    CHAIN_ID, FakeHashes, MemState, TOKEN, address, deploy_token, funded_state, sign,
    workload::{BASE_FEE, header},
};
use kestrel_pipeline::{
    BlockInput, BlockOutput, ExecError, Executor, InvalidTxPolicy, ParallelExecutor,
    SequentialExecutor,
};
use kestrel_types::{AccountInfo, ChainSpec, RecoveredTx};
use proptest::prelude::*;
use std::num::NonZeroUsize;

const ACCOUNTS: u64 = 12;
/// The block's fee recipient: a funded account, so transfers from and to it conflict for real.
const BENEFICIARY_INDEX: u64 = ACCOUNTS - 1;

// Contracts installed at fixed addresses, as raw runtime bytecode.
/// `SSTORE(0, BALANCE(COINBASE))`: reads the beneficiary mid-block.
const READ_COINBASE: (u8, &[u8]) = (0xc0, &[0x41, 0x31, 0x60, 0x00, 0x55, 0x00]);
/// `SSTORE(0, CALLDATALOAD(0))`: set a slot, or clear it with zero calldata.
const SET_SLOT: (u8, &[u8]) = (0xc1, &[0x60, 0x00, 0x35, 0x60, 0x00, 0x55, 0x00]);
/// `SSTORE(0, 1); REVERT(0, 0)`: a write that must not survive.
const REVERTS: (u8, &[u8]) = (
    0xc2,
    &[0x60, 0x01, 0x60, 0x00, 0x55, 0x60, 0x00, 0x60, 0x00, 0xfd],
);
/// `SSTORE(0, SLOAD(0) + 1); LOG0(0, 0)`: one hot slot every call conflicts on.
const COUNTER: (u8, &[u8]) = (
    0xc3,
    &[
        0x60, 0x00, 0x54, 0x60, 0x01, 0x01, 0x60, 0x00, 0x55, 0x60, 0x00, 0x60, 0x00, 0xa0, 0x00,
    ],
);

/// `SSTORE(0, SELFBALANCE)`: reads its own balance, which calls with value change.
const SELF_BALANCE: (u8, &[u8]) = (0xc4, &[0x47, 0x60, 0x00, 0x55, 0x00]);
/// `SELFDESTRUCT(CALLER)`: sends its balance to the caller (Cancun: the account stays).
const DESTRUCT: (u8, &[u8]) = (0xc5, &[0x33, 0xff]);

/// A beneficiary that does not exist before the block.
const FRESH_BENEFICIARY: Address = Address::new([0xbe; 20]);

fn contract(byte: u8) -> Address {
    Address::new([byte; 20])
}

/// Init code that deploys [`COUNTER`]'s runtime.
fn counter_init_code() -> Bytes {
    let runtime = COUNTER.1;
    let len = runtime.len() as u8;
    // CODECOPY(0, 12, len); RETURN(0, len): the 12 bytes before the runtime.
    let mut code = vec![
        0x60, len, 0x60, 12, 0x60, 0x00, 0x39, 0x60, len, 0x60, 0x00, 0xf3,
    ];
    code.extend_from_slice(runtime);
    code.into()
}

#[derive(Debug, Clone)]
enum Op {
    Transfer {
        from: u64,
        to: u64,
        value: u64,
    },
    Erc20 {
        from: u64,
        to: u64,
        amount: u64,
    },
    Call {
        from: u64,
        which: u8,
        arg: u64,
        value: u64,
    },
    /// Creates a contract whose init code self-destructs: created and deleted in one
    /// transaction, its value sent back.
    CreateDestroy {
        from: u64,
        value: u64,
    },
    /// Deploys a counter; later `CallDeployed` ops call the latest one deployed.
    Deploy {
        from: u64,
    },
    CallDeployed {
        from: u64,
    },
    /// A nonce from the future: invalid at execution.
    BadNonce {
        from: u64,
    },
}

/// An account index, low indexes more often, so some senders and recipients are hot.
fn hot_account() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![3 => 0..2u64, 1 => 0..ACCOUNTS]
}

/// The test contracts' first bytes, for `Op::Call`; the self-destructing one only if `destruct`.
fn called_contracts(destruct: bool) -> Vec<u8> {
    let mut contracts = vec![
        READ_COINBASE.0,
        SET_SLOT.0,
        REVERTS.0,
        COUNTER.0,
        SELF_BALANCE.0,
    ];
    if destruct {
        contracts.push(DESTRUCT.0);
    }
    contracts
}

fn op() -> impl Strategy<Value = Op> {
    let account = 0..ACCOUNTS;
    let hot = hot_account();
    let contracts = called_contracts(true);
    // Recipients: hot accounts (many senders paying one), any account (the beneficiary among
    // them), or a contract.
    let recipient = prop_oneof![2 => 0..2u64, 2 => 0..ACCOUNTS, 1 => 100..102u64];
    prop_oneof![
        4 => (hot.clone(), recipient, 0..5_000u64)
            .prop_map(|(from, to, value)| Op::Transfer { from, to, value }),
        3 => (account.clone(), hot.clone(), 0..200u64)
            .prop_map(|(from, to, amount)| Op::Erc20 { from, to, amount }),
        3 => (hot, prop::sample::select(contracts), 0..3u64, 0..3u64)
            .prop_map(|(from, which, arg, value)| Op::Call { from, which, arg, value }),
        1 => (account.clone(), 0..3u64).prop_map(|(from, value)| Op::CreateDestroy { from, value }),
        1 => account.clone().prop_map(|from| Op::Deploy { from }),
        1 => account.clone().prop_map(|from| Op::CallDeployed { from }),
        1 => account.prop_map(|from| Op::BadNonce { from }),
    ]
}

/// Ops whose blocks the parallel executor finishes from its multi-version memory (no account
/// created, destroyed or cleared, no invalid transaction), with conflicts on hot senders,
/// recipients, slots and the beneficiary.
fn memory_op() -> impl Strategy<Value = Op> {
    let hot = hot_account();
    let contracts = called_contracts(false);
    let recipient = prop_oneof![2 => 0..2u64, 2 => 0..ACCOUNTS, 1 => Just(100u64)];
    prop_oneof![
        4 => (hot.clone(), recipient, 1..5_000u64)
            .prop_map(|(from, to, value)| Op::Transfer { from, to, value }),
        3 => (0..ACCOUNTS, hot.clone(), 0..200u64)
            .prop_map(|(from, to, amount)| Op::Erc20 { from, to, amount }),
        3 => (hot, prop::sample::select(contracts), 0..3u64, 0..3u64)
            .prop_map(|(from, which, arg, value)| Op::Call { from, which, arg, value }),
    ]
}

fn state() -> MemState {
    let (mut state, accounts) = funded_state(ACCOUNTS);
    deploy_token(&mut state, &accounts);
    for (byte, code) in [
        READ_COINBASE,
        SET_SLOT,
        REVERTS,
        COUNTER,
        SELF_BALANCE,
        DESTRUCT,
    ] {
        let code = Bytes::from_static(code);
        let code_hash = alloy_primitives::keccak256(&code);
        state.codes.insert(code_hash, code);
        state.accounts.insert(
            contract(byte),
            AccountInfo {
                nonce: 1,
                balance: U256::ZERO,
                code_hash,
            },
        );
    }
    state
}

/// Signs the ops, with correct nonce chains per sender.
fn block(ops: &[Op]) -> Vec<RecoveredTx> {
    let mut nonces = [0u64; ACCOUNTS as usize];
    let mut deployed: Option<Address> = None;
    let mut txs = Vec::with_capacity(ops.len());
    for op in ops {
        let (from, to, value, input, gas_limit, nonce_skip) = match *op {
            Op::Transfer { from, to, value } => (
                from,
                // 100 and 101: transfers to contracts with code.
                TxKind::Call(match to {
                    100 => contract(SELF_BALANCE.0),
                    101 => contract(DESTRUCT.0),
                    _ => address(to),
                }),
                value,
                Bytes::new(),
                21_000,
                0,
            ),
            Op::Erc20 { from, to, amount } => {
                let mut data = vec![0xa9, 0x05, 0x9c, 0xbb];
                data.extend_from_slice(&[0u8; 12]);
                data.extend_from_slice(address(to).as_slice());
                data.extend_from_slice(&U256::from(amount).to_be_bytes::<32>());
                (from, TxKind::Call(TOKEN), 0, data.into(), 80_000, 0)
            }
            Op::Call {
                from,
                which,
                arg,
                value,
            } => (
                from,
                TxKind::Call(contract(which)),
                value,
                U256::from(arg).to_be_bytes::<32>().to_vec().into(),
                100_000,
                0,
            ),
            Op::Deploy { from } => (from, TxKind::Create, 0, counter_init_code(), 200_000, 0),
            Op::CreateDestroy { from, value } => (
                from,
                TxKind::Create,
                value,
                Bytes::from_static(DESTRUCT.1),
                100_000,
                0,
            ),
            Op::CallDeployed { from } => match deployed {
                Some(to) => (from, TxKind::Call(to), 0, Bytes::new(), 100_000, 0),
                None => continue,
            },
            Op::BadNonce { from } => (from, TxKind::Call(address(0)), 1, Bytes::new(), 21_000, 5),
        };
        let nonce = nonces[from as usize] + nonce_skip;
        if let Op::Deploy { .. } = op {
            deployed = Some(address(from).create(nonce));
        }
        if nonce_skip == 0 {
            nonces[from as usize] += 1;
        }
        txs.push(sign(
            from,
            TxEip1559 {
                chain_id: CHAIN_ID,
                nonce,
                gas_limit,
                max_fee_per_gas: u128::from(BASE_FEE) * 2,
                max_priority_fee_per_gas: 1 + u128::from(from % 3),
                to,
                value: U256::from(value),
                input,
                ..Default::default()
            },
        ));
    }
    txs
}

fn run(
    executor: &mut dyn Executor,
    state: &MemState,
    header: &Header,
    txs: &[RecoveredTx],
    policy: InvalidTxPolicy,
) -> Result<BlockOutput, String> {
    let input = BlockInput {
        header,
        txs,
        withdrawals: &[],
        policy,
    };
    executor
        .execute(&ChainSpec::dev(), input, state, &FakeHashes)
        .map_err(|err: ExecError| err.to_string())
}

fn parallel(threads: usize) -> ParallelExecutor {
    ParallelExecutor::new(NonZeroUsize::new(threads).expect("threads > 0"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64)
    ))]

    #[test]
    fn parallel_equals_sequential(
        ops in prop::collection::vec(op(), 1..100),
        // Sometimes too little gas for the whole block, so late transactions are invalid.
        gas_limit in prop_oneof![3 => Just(30_000_000u64), 1 => 300_000..2_000_000u64],
        reject in any::<bool>(),
        // A funded account that also sends and receives, or one that does not exist yet.
        fresh_beneficiary in prop::bool::weighted(0.2),
    ) {
        let state = state();
        let beneficiary = if fresh_beneficiary {
            FRESH_BENEFICIARY
        } else {
            address(BENEFICIARY_INDEX)
        };
        let header = header(gas_limit, beneficiary);
        let txs = block(&ops);
        let policy = if reject { InvalidTxPolicy::Reject } else { InvalidTxPolicy::Skip };
        let expected = run(&mut SequentialExecutor, &state, &header, &txs, policy);
        for threads in [1, 2, 8] {
            // Every block through the parallel path, however small.
            let mut executor = parallel(threads).with_min_txs(0);
            let got = run(&mut executor, &state, &header, &txs, policy);
            prop_assert_eq!(&got, &expected, "{} threads", threads);
        }
    }

    /// Blocks the parallel executor finishes from the multi-version memory: the same result,
    /// and on one thread (where nothing conflicts, so the block is not abandoned to the
    /// sequential executor for its aborts) not by falling back to sequential execution.
    #[test]
    fn parallel_from_memory_equals_sequential(
        ops in prop::collection::vec(memory_op(), 1..60),
    ) {
        let state = state();
        let header = header(30_000_000, address(BENEFICIARY_INDEX));
        let txs = block(&ops);
        let expected = run(&mut SequentialExecutor, &state, &header, &txs, InvalidTxPolicy::Reject);
        prop_assert!(expected.is_ok(), "{:?}", expected);
        for threads in [1, 2, 8] {
            let mut executor = parallel(threads).with_min_txs(0);
            let got = run(&mut executor, &state, &header, &txs, InvalidTxPolicy::Reject);
            prop_assert_eq!(&got, &expected, "{} threads", threads);
            let stats = executor.last_block().expect("executed");
            prop_assert!(threads > 1 || !stats.sequential, "fell back: {:?}", stats);
        }
    }
}

/// The benches' workloads, which take the conflict-free fast path at scale.
#[test]
fn bench_workloads_match() {
    let (mut state, accounts) = funded_state(300);
    deploy_token(&mut state, &accounts);
    let header = header(1_000_000_000, address(BENEFICIARY_INDEX));
    for txs in [
        kestrel_benches::transfer_block(&accounts, 300, BASE_FEE),
        kestrel_benches::erc20_block(&accounts, 300, BASE_FEE),
    ] {
        let expected = run(
            &mut SequentialExecutor,
            &state,
            &header,
            &txs,
            InvalidTxPolicy::Reject,
        );
        assert!(expected.is_ok(), "{expected:?}");
        for threads in [1, 2, 8] {
            let got = run(
                &mut parallel(threads),
                &state,
                &header,
                &txs,
                InvalidTxPolicy::Reject,
            );
            assert_eq!(got, expected, "{threads} threads");
        }
    }
}
