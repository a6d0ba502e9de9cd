//! EIP-7610: a contract creation at an address that has storage (but no code and nonce 0) fails
//! as a collision, in both executors: by a creation transaction, by CREATE and by CREATE2. Each
//! case runs once with storage at the target (collision) and once without (the creation goes
//! through), so the test fails if either outcome is wrong.

use alloy_consensus::{Header, TxEip1559};
use alloy_primitives::{Address, B256, Bytes, TxKind, U256, keccak256};
use kestrel_benches::{
    CHAIN_ID, FakeHashes, MemState, address, funded_state, sign,
    workload::{BASE_FEE, header},
};
use kestrel_pipeline::{
    BlockInput, BlockOutput, Executor, InvalidTxPolicy, ParallelExecutor, SequentialExecutor,
};
use kestrel_types::{
    AccountInfo, ChainSpec, RecoveredTx, chain::GenesisAlloc, state::KECCAK_EMPTY,
};
use std::{collections::BTreeMap, num::NonZeroUsize};

const GAS_LIMIT: u64 = 1_000_000;
/// A contract that creates one contract with empty init code and stores the new address (zero
/// if the creation failed) in slot 0.
const FACTORY: Address = Address::new([0xfa; 20]);
/// `SSTORE(0, CREATE(0, 0, 0))`.
const CREATE_CODE: &[u8] = &[0x60, 0, 0x60, 0, 0x60, 0, 0xf0, 0x60, 0, 0x55, 0x00];
const SALT: u8 = 0x2a;
/// `SSTORE(0, CREATE2(0, 0, 0, SALT))`.
const CREATE2_CODE: &[u8] = &[
    0x60, SALT, 0x60, 0, 0x60, 0, 0x60, 0, 0xf5, 0x60, 0, 0x55, 0x00,
];
/// Init code that returns one byte of runtime code (`STOP`).
const INIT_CODE: &[u8] = &[0x60, 0x00, 0x60, 0x00, 0x53, 0x60, 0x01, 0x60, 0x00, 0xf3];

/// The slot the storage-only account holds.
const SLOT: U256 = U256::from_limbs([7, 0, 0, 0]);

enum Creation {
    Transaction,
    Create,
    Create2,
}

impl Creation {
    /// The address the creation targets, the transaction that makes it, and the state before.
    fn setup(&self) -> (Address, RecoveredTx, MemState) {
        let (mut state, _) = funded_state(1);
        let tx = |to: TxKind, input: &[u8]| {
            sign(
                0,
                TxEip1559 {
                    chain_id: CHAIN_ID,
                    nonce: 0,
                    gas_limit: GAS_LIMIT,
                    max_fee_per_gas: u128::from(BASE_FEE),
                    to,
                    input: Bytes::copy_from_slice(input),
                    ..Default::default()
                },
            )
        };
        let mut factory = |code: &[u8]| {
            let code = Bytes::copy_from_slice(code);
            let hash = keccak256(&code);
            state.codes.insert(hash, code);
            let info = AccountInfo {
                nonce: 1,
                balance: U256::ZERO,
                code_hash: hash,
            };
            state.accounts.insert(FACTORY, info);
        };
        let (target, tx) = match self {
            Self::Transaction => (address(0).create(0), tx(TxKind::Create, INIT_CODE)),
            Self::Create => {
                factory(CREATE_CODE);
                (FACTORY.create(1), tx(TxKind::Call(FACTORY), &[]))
            }
            Self::Create2 => {
                factory(CREATE2_CODE);
                let target = FACTORY.create2(B256::with_last_byte(SALT), keccak256([]));
                (target, tx(TxKind::Call(FACTORY), &[]))
            }
        };
        (target, tx, state)
    }
}

/// The chain spec of the state: the dev chain's, with `target` in the allocation holding
/// [`SLOT`] if `storage` (what tells the executors that storage-only accounts exist).
fn spec(target: Address, storage: bool) -> ChainSpec {
    let mut spec = ChainSpec::dev();
    if storage {
        let alloc = GenesisAlloc {
            info: AccountInfo::with_balance(U256::ZERO),
            code: None,
            storage: BTreeMap::from([(SLOT, U256::from(1))]),
        };
        spec.alloc.insert(target, alloc);
    }
    spec
}

fn execute(
    executor: &mut dyn Executor,
    creation: &Creation,
    storage: bool,
) -> (Address, BlockOutput) {
    let (target, tx, mut state) = creation.setup();
    if storage {
        state.storage.insert((target, SLOT), U256::from(1));
        state
            .accounts
            .insert(target, AccountInfo::with_balance(U256::ZERO));
    }
    let header: Header = header(30_000_000, Address::ZERO);
    let input = BlockInput {
        header: &header,
        txs: std::slice::from_ref(&tx),
        withdrawals: &[],
        policy: InvalidTxPolicy::Reject,
    };
    let output = executor
        .execute(&spec(target, storage), input, &state, &FakeHashes)
        .expect("the block executes");
    (target, output)
}

fn executors() -> Vec<(&'static str, Box<dyn Executor>)> {
    let parallel = |threads| {
        let threads = NonZeroUsize::new(threads).expect("threads > 0");
        Box::new(ParallelExecutor::new(threads).with_min_txs(0)) as Box<dyn Executor>
    };
    vec![
        ("sequential", Box::new(SequentialExecutor)),
        ("parallel 1", parallel(1)),
        ("parallel 2", parallel(2)),
    ]
}

/// The nonce the creating account ends with, and whether `target` got code.
fn creator_nonce_and_code(output: &BlockOutput, creator: Address, target: Address) -> (u64, bool) {
    let nonce = output.changes.accounts[&creator]
        .expect("the creator exists")
        .nonce;
    let code = output
        .changes
        .accounts
        .get(&target)
        .copied()
        .flatten()
        .is_some_and(|account| account.code_hash != KECCAK_EMPTY);
    (nonce, code)
}

#[test]
fn creation_transaction_collides_with_storage() {
    for (name, mut executor) in executors() {
        let (target, output) = execute(&mut *executor, &Creation::Transaction, true);
        let receipt = &output.receipts[0];
        assert!(!receipt.status(), "{name}: the creation must fail");
        // A collision spends all the transaction's gas, as an invalid first opcode would.
        assert_eq!(output.gas_used, GAS_LIMIT, "{name}");
        assert_eq!(
            creator_nonce_and_code(&output, address(0), target),
            (1, false),
            "{name}"
        );
        assert!(
            !output.changes.storage.contains_key(&target),
            "{name}: storage untouched"
        );

        let (target, output) = execute(&mut *executor, &Creation::Transaction, false);
        assert!(
            output.receipts[0].status(),
            "{name}: without storage it succeeds"
        );
        assert!(output.gas_used < GAS_LIMIT, "{name}");
        assert_eq!(
            creator_nonce_and_code(&output, address(0), target),
            (1, true),
            "{name}"
        );
    }
}

#[test]
fn create_and_create2_collide_with_storage() {
    for creation in [Creation::Create, Creation::Create2] {
        for (name, mut executor) in executors() {
            let (target, output) = execute(&mut *executor, &creation, true);
            assert!(
                output.receipts[0].status(),
                "{name}: the calling transaction succeeds"
            );
            // The factory's nonce is bumped, as for any creation attempt, and slot 0 stays
            // zero: the opcode pushed 0.
            assert_eq!(
                creator_nonce_and_code(&output, FACTORY, target),
                (2, false),
                "{name}"
            );
            assert!(
                !output.changes.storage.contains_key(&FACTORY),
                "{name}: CREATE gave 0"
            );
            let collided_gas = output.gas_used;

            let (target, output) = execute(&mut *executor, &creation, false);
            assert_eq!(
                creator_nonce_and_code(&output, FACTORY, target),
                (2, false),
                "{name}"
            );
            let stored = output.changes.storage[&FACTORY].slots[&U256::ZERO];
            assert_eq!(stored, U256::from_be_slice(target.as_slice()), "{name}");
            // The collision spent the gas passed to the creation's frame.
            assert!(
                collided_gas > output.gas_used + 100_000,
                "{name}: {collided_gas}"
            );
        }
    }
}
