//! Runs one BlockchainTest through Kestrel's import path: the header rules and execution of
//! `kestrel_pipeline::import`, the state applied and committed by `kestrel_storage` in a fresh
//! MDBX database, and the final state read back through the store's `StateView`.

use crate::fixture::{Account, BlockchainTest, expected_exceptions, fork_of_network};
use alloy_consensus::{Block, Header, TxEnvelope, proofs::calculate_transaction_root};
use alloy_primitives::{Address, B256};
use alloy_trie::root::storage_root_unhashed;
use kestrel_pipeline::{
    Executor,
    evm::BlockHashes,
    import::{ImportError, check_state_root, decode_block, execute_block, validate_header},
};
use kestrel_storage::{
    ChainView, Durability, StateView, StorageError, Store, genesis_changes, state_root_from_alloc,
};
use kestrel_types::{ChainSpec, Fork, SealedBlock, StateChanges};
use std::{cell::Cell, collections::HashMap, fmt::Display};
use tempfile::TempDir;

/// Chain id of every BlockchainTest.
const TEST_CHAIN_ID: u64 = 1;

/// The first thing that did not match, reported as
/// `block <block>: <field>: expected <expected>, got <got>`.
#[derive(Debug)]
pub struct Failure {
    pub block: u64,
    pub field: String,
    pub expected: String,
    pub got: String,
}

impl Failure {
    fn new(
        block: u64,
        field: impl Into<String>,
        expected: impl Display,
        got: impl Display,
    ) -> Self {
        Self {
            block,
            field: field.into(),
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }
}

pub enum Outcome {
    Passed,
    Failed(Failure),
    /// The test's network is not one Kestrel runs.
    Skipped,
}

/// Runs `test`. `progress` holds the number of the block being worked on, so that the caller
/// can say where a panic happened.
pub fn run(test: &BlockchainTest, executor: &mut dyn Executor, progress: &Cell<u64>) -> Outcome {
    let Some(fork) = fork_of_network(&test.network) else {
        return Outcome::Skipped;
    };
    match run_supported(test, fork, executor, progress) {
        Ok(()) => Outcome::Passed,
        Err(failure) => Outcome::Failed(failure),
    }
}

fn run_supported(
    test: &BlockchainTest,
    fork: Fork,
    executor: &mut dyn Executor,
    progress: &Cell<u64>,
) -> Result<(), Failure> {
    let mut chain = Chain::genesis(test, fork)?;
    for block in &test.blocks {
        let number = block
            .blocknumber
            .as_deref()
            .and_then(|n| n.parse().ok())
            .unwrap_or(progress.get() + 1);
        progress.set(number);
        let result = chain.import(executor, &block.rlp);
        match (&block.expect_exception, result) {
            (None, Ok(hash)) => {
                if let Some(header) = &block.block_header
                    && header.hash != hash
                {
                    return Err(Failure::new(number, "block hash", header.hash, hash));
                }
            }
            (None, Err(err)) => return Err(mismatch(number, &err)),
            (Some(expected), Ok(_)) => {
                return Err(Failure::new(
                    number,
                    "exception",
                    expected,
                    "block imported",
                ));
            }
            (Some(expected), Err(ImportError::TransactionsRoot { .. }))
                if expected.contains("TransactionException.") =>
            {
                chain.check_invalid_tx(executor, number, expected, &block.rlp)?;
            }
            (Some(expected), Err(err)) => {
                check_rejection(number, expected, &err)?;
                chain.check_head_unchanged(number)?;
            }
        }
    }
    chain.check_post(test)
}

/// A valid block the import refused: the field that differs, or the whole error.
fn mismatch(number: u64, err: &ImportError) -> Failure {
    match err {
        ImportError::GasUsed { header, computed } => {
            Failure::new(number, "gas used", header, computed)
        }
        ImportError::BlobGasUsed { header, computed } => {
            Failure::new(number, "blob gas used", header, computed)
        }
        ImportError::ReceiptsRoot { header, computed } => {
            Failure::new(number, "receipts root", header, computed)
        }
        ImportError::LogsBloom { header, computed } => {
            Failure::new(number, "logs bloom", header, computed)
        }
        ImportError::RequestsHash { header, computed } => Failure::new(
            number,
            "requests hash",
            format!("{header:?}"),
            format!("{computed:?}"),
        ),
        ImportError::StateRoot { header, computed } => {
            Failure::new(number, "state root", header, computed)
        }
        err => Failure::new(number, "import", "valid block", err),
    }
}

/// An invalid block must be refused as invalid (not for a failure of ours), for one of the
/// reasons the test names.
fn check_rejection(number: u64, expected: &str, err: &ImportError) -> Result<(), Failure> {
    if err.is_fatal() {
        return Err(Failure::new(
            number,
            "exception",
            expected,
            format!("fatal: {err}"),
        ));
    }
    match err.exception() {
        Some(class) if expected_exceptions(expected).any(|e| e == class) => Ok(()),
        Some(class) => Err(Failure::new(
            number,
            "exception",
            expected,
            format!("{class} ({err})"),
        )),
        None => Err(Failure::new(number, "exception", expected, err)),
    }
}

/// A block imported and committed, kept so that a later block on another branch can rebuild the
/// store along its own branch.
struct Imported {
    block: SealedBlock,
    changes: StateChanges,
}

/// One store holding one branch: genesis, then each block's child.
struct BranchStore {
    store: Store,
    /// Block hashes by number, for `BLOCKHASH` (and the head).
    canonical: Vec<B256>,
    // Declared after `store` so the database closes before its directory goes.
    _dir: TempDir,
}

impl BranchStore {
    fn open() -> Result<Self, StorageError> {
        let dir = tempfile::Builder::new()
            .prefix("kestrel-ef-")
            .tempdir()
            .expect("temporary directory");
        // Nothing outlives the test, so commits need not reach the disk.
        let store = Store::open_with(dir.path(), Durability::Unsynced)?;
        Ok(Self {
            store,
            canonical: Vec::new(),
            _dir: dir,
        })
    }

    fn head(&self) -> B256 {
        *self.canonical.last().expect("genesis is written first")
    }

    /// Writes block 0 of `spec` as a node does.
    fn init_genesis(&mut self, spec: &ChainSpec) -> Result<SealedBlock, StorageError> {
        let block = self.store.init_genesis(spec)?;
        self.canonical.push(block.hash);
        Ok(block)
    }

    /// Writes a block whose state root is known to be right (genesis, or one imported before).
    fn write(&mut self, imported: &Imported) -> Result<B256, StorageError> {
        let mut writer = self.store.begin_block()?;
        let root = writer.apply_state(&imported.changes)?;
        writer.insert_block(&imported.block)?;
        writer.commit()?;
        self.canonical.push(imported.block.hash);
        Ok(root)
    }
}

impl BlockHashes for BranchStore {
    fn block_hash(&self, number: u64) -> Result<B256, StorageError> {
        // revm asks only for the 256 blocks before the one executing, all on this branch.
        let hash = usize::try_from(number)
            .ok()
            .and_then(|n| self.canonical.get(n))
            .unwrap_or_else(|| panic!("BLOCKHASH({number}) beyond the branch"));
        Ok(*hash)
    }
}

struct Chain {
    spec: ChainSpec,
    /// The branch of the last block imported, which the tests treat as the head.
    branch: BranchStore,
    /// Every block imported, by hash.
    known: HashMap<B256, Imported>,
}

impl Chain {
    /// Builds the chain spec as a node would from a genesis file (the test's genesis header and
    /// `pre` state written as geth genesis JSON) and writes block 0 with the store's own
    /// `init_genesis`; its hash must be the test's.
    fn genesis(test: &BlockchainTest, fork: Fork) -> Result<Self, Failure> {
        let block = decode_block(&test.genesis_rlp)
            .map_err(|err| Failure::new(0, "genesis rlp", "a block", err))?;
        let spec =
            ChainSpec::from_genesis_json(&genesis_json(test, fork, &block.header).to_string())
                .map_err(|err| Failure::new(0, "genesis json", "a chain spec", err))?;
        let fatal = |err: StorageError| Failure::new(0, "storage", "no error", err);
        let mut branch = BranchStore::open().map_err(fatal)?;
        let sealed = branch.init_genesis(&spec).map_err(fatal)?;
        if let Some((field, expected, got)) = first_difference(&block.header, &sealed.header) {
            return Err(Failure::new(0, format!("genesis {field}"), expected, got));
        }
        if sealed.hash != test.genesis_block_header.hash {
            return Err(Failure::new(
                0,
                "genesis hash",
                test.genesis_block_header.hash,
                sealed.hash,
            ));
        }
        let genesis = Imported {
            block: sealed,
            changes: genesis_changes(&spec),
        };
        Ok(Self {
            spec,
            branch,
            known: HashMap::from([(genesis.block.hash, genesis)]),
        })
    }

    /// Imports one block: decode, header rules against its parent, execution, state root, commit.
    /// A rejected block leaves nothing committed. Returns the block's hash.
    fn import(&mut self, executor: &mut dyn Executor, rlp: &[u8]) -> Result<B256, ImportError> {
        self.import_block(executor, decode_block(rlp)?)
    }

    /// The tests' blocks with an invalid transaction were filled (by retesteth) with a header
    /// built from the transactions that could execute, so the header's transactions root does
    /// not commit to the body and import stops there. To check that Kestrel refuses the
    /// transaction for the reason the test names, the block is imported again with the root of
    /// its actual body.
    fn check_invalid_tx(
        &mut self,
        executor: &mut dyn Executor,
        number: u64,
        expected: &str,
        rlp: &[u8],
    ) -> Result<(), Failure> {
        let mut block = decode_block(rlp).expect("decoded before");
        block.header.transactions_root = calculate_transaction_root(&block.body.transactions);
        match self.import_block(executor, block) {
            Ok(_) => Err(Failure::new(
                number,
                "exception",
                expected,
                "block imported once its transactions root was corrected",
            )),
            Err(err) => {
                check_rejection(number, expected, &err)?;
                self.check_head_unchanged(number)
            }
        }
    }

    fn import_block(
        &mut self,
        executor: &mut dyn Executor,
        block: Block<TxEnvelope>,
    ) -> Result<B256, ImportError> {
        let parent_hash = block.header.parent_hash;
        let parent = self
            .known
            .get(&parent_hash)
            .ok_or(ImportError::UnknownParent(parent_hash))?;
        validate_header(&self.spec, &parent.block.header, &block.header)?;

        // A block on another branch than the head's executes on a store rebuilt along its
        // branch, which replaces the current one only if the block is valid.
        let mut side = None;
        let branch = if parent_hash == self.branch.head() {
            &mut self.branch
        } else {
            side.insert(self.rebuild(parent_hash)?)
        };
        let (output, txs) = branch
            .store
            .view(|reader| execute_block(&self.spec, executor, &block, reader, &*branch))??;
        let mut writer = branch.store.begin_block()?;
        let root = writer.apply_state(&output.changes)?;
        // Returning drops the writer: nothing of a rejected block is committed.
        check_state_root(&block.header, root)?;
        let hash = block.header.hash_slow();
        let sealed = SealedBlock {
            hash,
            header: block.header,
            txs,
            receipts: output.receipts,
        };
        writer.insert_block(&sealed)?;
        writer.commit()?;
        branch.canonical.push(hash);
        if let Some(side) = side {
            self.branch = side;
        }
        let imported = Imported {
            block: sealed,
            changes: output.changes,
        };
        self.known.insert(hash, imported);
        Ok(hash)
    }

    /// A fresh store holding the branch from genesis to `tip`, from the blocks' recorded changes.
    fn rebuild(&self, tip: B256) -> Result<BranchStore, ImportError> {
        let mut path = Vec::new();
        let mut hash = tip;
        while let Some(imported) = self.known.get(&hash) {
            path.push(imported);
            hash = imported.block.header.parent_hash;
        }
        let mut branch = BranchStore::open()?;
        for imported in path.iter().rev() {
            let root = branch.write(imported)?;
            assert_eq!(
                root, imported.block.header.state_root,
                "replaying block {} gave another state root",
                imported.block.header.number
            );
        }
        Ok(branch)
    }

    /// After a rejected block the store's head must still be the branch's.
    fn check_head_unchanged(&self, number: u64) -> Result<(), Failure> {
        let head = self
            .branch
            .store
            .view(|r| -> Result<_, StorageError> {
                let number = r.head()?.expect("genesis is committed");
                r.block_hash(number)
            })
            .and_then(|head| head)
            .map_err(|err| Failure::new(number, "storage", "no error", err))?;
        if head != Some(self.branch.head()) {
            return Err(Failure::new(
                number,
                "head after rejected block",
                self.branch.head(),
                format!("{head:?}"),
            ));
        }
        Ok(())
    }

    /// The head must be `lastblockhash`, and the state `postState` exactly (or have the root
    /// `postStateHash`).
    fn check_post(&self, test: &BlockchainTest) -> Result<(), Failure> {
        let head = &self.known[&self.branch.head()].block.header;
        let number = head.number;
        if self.branch.head() != test.lastblockhash {
            return Err(Failure::new(
                number,
                "last block hash",
                test.lastblockhash,
                self.branch.head(),
            ));
        }
        let Some(post) = &test.post_state else {
            let expected = test
                .post_state_hash
                .expect("a test has postState or postStateHash");
            if head.state_root != expected {
                return Err(Failure::new(
                    number,
                    "post state root",
                    expected,
                    head.state_root,
                ));
            }
            return Ok(());
        };
        self.branch
            .store
            .view(|reader| check_post_state(reader, number, post))
            .map_err(|err| Failure::new(number, "storage", "no error", err))??;
        // Every account of `post` matched; the root over `post` equal to the head's rules out
        // accounts the test does not list.
        let alloc = post.iter().map(|(a, acc)| (*a, acc.to_alloc())).collect();
        let root = state_root_from_alloc(&alloc);
        if root != head.state_root {
            return Err(Failure::new(
                number,
                "post state root",
                root,
                head.state_root,
            ));
        }
        Ok(())
    }
}

fn check_post_state(
    reader: &kestrel_storage::Reader<'_>,
    number: u64,
    post: &std::collections::BTreeMap<Address, Account>,
) -> Result<(), Failure> {
    let storage_err = |err: StorageError| Failure::new(number, "storage", "no error", err);
    for (address, expected) in post {
        let field = |name: &str| format!("post {address} {name}");
        let Some(account) = reader.account(*address).map_err(storage_err)? else {
            return Err(Failure::new(number, field("account"), "present", "absent"));
        };
        if account.balance != expected.balance {
            return Err(Failure::new(
                number,
                field("balance"),
                expected.balance,
                account.balance,
            ));
        }
        if account.nonce != expected.nonce.to::<u64>() {
            return Err(Failure::new(
                number,
                field("nonce"),
                expected.nonce,
                account.nonce,
            ));
        }
        if account.code_hash != expected.code_hash() {
            return Err(Failure::new(
                number,
                field("code hash"),
                expected.code_hash(),
                account.code_hash,
            ));
        }
        if !expected.code.is_empty() {
            let code = reader.code(account.code_hash).map_err(storage_err)?;
            if code.as_ref() != Some(&expected.code) {
                return Err(Failure::new(
                    number,
                    field("code"),
                    &expected.code,
                    code.map_or_else(|| "none".into(), |code| code.to_string()),
                ));
            }
        }
        for (slot, value) in &expected.storage {
            let got = reader.storage(*address, *slot).map_err(storage_err)?;
            if got != *value {
                return Err(Failure::new(
                    number,
                    field(&format!("slot {slot:#x}")),
                    format!("{value:#x}"),
                    format!("{got:#x}"),
                ));
            }
        }
        // Every listed slot matched; equal roots rule out slots the test does not list.
        let root = storage_root_unhashed(
            expected
                .storage
                .iter()
                .filter(|(_, value)| !value.is_zero())
                .map(|(slot, value)| (B256::from(*slot), *value)),
        );
        let got = reader.storage_root(*address).map_err(storage_err)?;
        if got != Some(root) {
            return Err(Failure::new(
                number,
                field("storage root"),
                root,
                got.map_or_else(|| "none".into(), |got| got.to_string()),
            ));
        }
    }
    Ok(())
}

/// The test's genesis as a geth genesis file: chain id 1, every fork up to `fork` active from
/// genesis, the header fields a genesis file sets taken from the test's genesis header, and `pre`
/// as the allocation.
fn genesis_json(test: &BlockchainTest, fork: Fork, header: &Header) -> serde_json::Value {
    let mut config = serde_json::json!({ "chainId": TEST_CHAIN_ID, "cancunTime": 0 });
    if fork >= Fork::Prague {
        config["pragueTime"] = 0.into();
    }
    let alloc: serde_json::Map<String, serde_json::Value> = test
        .pre
        .iter()
        .map(|(address, account)| (address.to_string(), account.to_genesis_json()))
        .collect();
    let quantity = |n: u64| format!("{n:#x}");
    serde_json::json!({
        "config": config,
        "nonce": quantity(u64::from(header.nonce)),
        "timestamp": quantity(header.timestamp),
        "extraData": header.extra_data,
        "gasLimit": quantity(header.gas_limit),
        "gasUsed": quantity(header.gas_used),
        "difficulty": header.difficulty,
        "mixHash": header.mix_hash,
        "coinbase": header.beneficiary,
        "parentHash": header.parent_hash,
        "baseFeePerGas": header.base_fee_per_gas.map(quantity),
        "blobGasUsed": header.blob_gas_used.map(quantity),
        "excessBlobGas": header.excess_blob_gas.map(quantity),
        "parentBeaconBlockRoot": header.parent_beacon_block_root,
        "alloc": alloc,
    })
}

/// The first header field where `expected` and `got` differ, as (name, expected, got).
fn first_difference(expected: &Header, got: &Header) -> Option<(&'static str, String, String)> {
    macro_rules! fields {
        ($($name:literal => $field:ident),* $(,)?) => {
            $(if expected.$field != got.$field {
                return Some(($name, format!("{:?}", expected.$field), format!("{:?}", got.$field)));
            })*
        };
    }
    fields!(
        "state root" => state_root,
        "parent hash" => parent_hash,
        "ommers hash" => ommers_hash,
        "coinbase" => beneficiary,
        "transactions root" => transactions_root,
        "receipts root" => receipts_root,
        "logs bloom" => logs_bloom,
        "difficulty" => difficulty,
        "number" => number,
        "gas limit" => gas_limit,
        "gas used" => gas_used,
        "timestamp" => timestamp,
        "extra data" => extra_data,
        "mix hash" => mix_hash,
        "nonce" => nonce,
        "base fee" => base_fee_per_gas,
        "withdrawals root" => withdrawals_root,
        "blob gas used" => blob_gas_used,
        "excess blob gas" => excess_blob_gas,
        "parent beacon block root" => parent_beacon_block_root,
        "requests hash" => requests_hash,
        "block access list hash" => block_access_list_hash,
        "slot number" => slot_number,
    );
    (expected != got).then(|| ("header", format!("{expected:?}"), format!("{got:?}")))
}
