//! The MDBX tables. Keys and values are laid out in `codec`. Bodies and receipts are in the
//! store's block archive (`blocks`), not here.

use libmdbx::{DatabaseKind, RW, Table, TableFlags, Transaction, TransactionKind};

/// keccak(address) → address, written when the account is created (`preimages`).
pub(crate) const ACCOUNT_PREIMAGES: &str = "AccountPreimages";
/// keccak(address) ‖ keccak(slot) → slot, written when the slot is first set.
pub(crate) const SLOT_PREIMAGES: &str = "SlotPreimages";
/// code hash → code.
pub(crate) const BYTECODES: &str = "Bytecodes";
/// keccak(address) → account record with its storage root.
pub(crate) const HASHED_ACCOUNTS: &str = "HashedAccounts";
/// keccak(address) ‖ keccak(slot) → value.
pub(crate) const HASHED_STORAGE: &str = "HashedStorage";
/// Nibble path → branch node of the account trie.
pub(crate) const ACCOUNT_TRIE: &str = "AccountTrie";
/// keccak(address) ‖ nibble path → branch node of that account's storage trie.
pub(crate) const STORAGE_TRIE: &str = "StorageTrie";
/// Block number → RLP header.
pub(crate) const HEADERS: &str = "Headers";
/// Block number → block hash.
pub(crate) const CANONICAL_HASHES: &str = "CanonicalHashes";
/// Block hash → block number.
pub(crate) const BLOCK_NUMBERS: &str = "BlockNumbers";
/// Transaction hash → block number ‖ index.
pub(crate) const TX_LOCATIONS: &str = "TxLocations";
/// address ‖ block → the account before that block changed it (empty: it did not exist).
pub(crate) const ACCOUNT_HISTORY: &str = "AccountHistory";
/// address ‖ slot ‖ block → the slot's value before that block changed it (empty: zero).
pub(crate) const STORAGE_HISTORY: &str = "StorageHistory";
/// Block → the keys it changed (`history`'s change list), for pruning.
pub(crate) const HISTORY_CHANGES: &str = "HistoryChanges";
/// block ‖ address → the account before that block changed it, until `history::index` moves it
/// into [`ACCOUNT_HISTORY`].
pub(crate) const ACCOUNT_CHANGES: &str = "AccountChangeSets";
/// block ‖ address ‖ slot → the slot's value before that block changed it, until
/// `history::index` moves it into [`STORAGE_HISTORY`].
pub(crate) const STORAGE_CHANGES: &str = "StorageChangeSets";
/// Named values, e.g. [`HEAD_KEY`].
pub(crate) const METADATA: &str = "Metadata";

/// Metadata key of the last committed block number.
pub(crate) const HEAD_KEY: &[u8] = b"head";
/// Metadata key of the oldest block whose state the history tables can answer.
pub(crate) const HISTORY_FROM_KEY: &[u8] = b"history_from";
/// Metadata key present while the account-trie table holds stale values of branches kept in
/// memory (`trie::deferred`): an open finding it rebuilds the account trie.
pub(crate) const DEFERRED_KEY: &[u8] = b"account_trie_deferred";
/// Metadata key of how far the change sets have been moved into the history tables.
pub(crate) const HISTORY_INDEXED_KEY: &[u8] = b"history_indexed";

pub(crate) const ALL: [&str; 17] = [
    ACCOUNT_PREIMAGES,
    SLOT_PREIMAGES,
    BYTECODES,
    HASHED_ACCOUNTS,
    HASHED_STORAGE,
    ACCOUNT_TRIE,
    STORAGE_TRIE,
    HEADERS,
    CANONICAL_HASHES,
    BLOCK_NUMBERS,
    TX_LOCATIONS,
    ACCOUNT_HISTORY,
    STORAGE_HISTORY,
    HISTORY_CHANGES,
    ACCOUNT_CHANGES,
    STORAGE_CHANGES,
    METADATA,
];

/// Handles of every table, opened once per transaction (an already-open handle is found
/// lock-free by MDBX, so this costs a few hundred nanoseconds per table).
pub(crate) struct Tables<'t> {
    pub account_preimages: Table<'t>,
    pub slot_preimages: Table<'t>,
    pub bytecodes: Table<'t>,
    pub hashed_accounts: Table<'t>,
    pub hashed_storage: Table<'t>,
    pub account_trie: Table<'t>,
    pub storage_trie: Table<'t>,
    pub headers: Table<'t>,
    pub canonical_hashes: Table<'t>,
    pub block_numbers: Table<'t>,
    pub tx_locations: Table<'t>,
    pub account_history: Table<'t>,
    pub storage_history: Table<'t>,
    pub history_changes: Table<'t>,
    pub account_changes: Table<'t>,
    pub storage_changes: Table<'t>,
    pub metadata: Table<'t>,
}

impl<'t> Tables<'t> {
    pub fn open<K: TransactionKind, E: DatabaseKind>(
        txn: &'t Transaction<'_, K, E>,
    ) -> Result<Self, libmdbx::Error> {
        let open = |name| txn.open_table(Some(name));
        Ok(Self {
            account_preimages: open(ACCOUNT_PREIMAGES)?,
            slot_preimages: open(SLOT_PREIMAGES)?,
            bytecodes: open(BYTECODES)?,
            hashed_accounts: open(HASHED_ACCOUNTS)?,
            hashed_storage: open(HASHED_STORAGE)?,
            account_trie: open(ACCOUNT_TRIE)?,
            storage_trie: open(STORAGE_TRIE)?,
            headers: open(HEADERS)?,
            canonical_hashes: open(CANONICAL_HASHES)?,
            block_numbers: open(BLOCK_NUMBERS)?,
            tx_locations: open(TX_LOCATIONS)?,
            account_history: open(ACCOUNT_HISTORY)?,
            storage_history: open(STORAGE_HISTORY)?,
            history_changes: open(HISTORY_CHANGES)?,
            account_changes: open(ACCOUNT_CHANGES)?,
            storage_changes: open(STORAGE_CHANGES)?,
            metadata: open(METADATA)?,
        })
    }
}

/// Creates the tables that do not exist yet.
pub(crate) fn create_all<E: DatabaseKind>(
    txn: &Transaction<'_, RW, E>,
) -> Result<(), libmdbx::Error> {
    for name in ALL {
        txn.create_table(Some(name), TableFlags::default())?;
    }
    Ok(())
}
