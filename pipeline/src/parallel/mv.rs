//! Multi-version memory: the writes of transactions executed speculatively, per location and per
//! transaction index, so that a later transaction reads the latest earlier write instead of the
//! block's starting state.
//!
//! Entries are hints, not truth: the committing thread validates every read against the state the
//! block has actually reached, so a stale or missing entry costs a re-execution, never a wrong
//! result. That is why there are no ESTIMATE markers or incarnation numbers here yet.

use alloy_primitives::{Address, U256, map::HashMap};
use parking_lot::Mutex;
use revm::state::{AccountInfo, EvmState};
use std::collections::BTreeMap;

/// A location a transaction can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Loc {
    /// Nonce, balance and code of an account.
    Basic(Address),
    Storage(Address, U256),
}

/// The value a transaction wrote at a [`Loc`].
#[derive(Debug, Clone)]
pub(super) enum Val {
    /// `None`: the account does not exist after the write (self-destructed or cleared as empty).
    Basic(Option<AccountInfo>),
    Storage(U256),
}

/// Shards keyed by one byte of the location, so workers writing different accounts rarely
/// contend on one lock.
const SHARDS: usize = 256;

type Versions = BTreeMap<usize, Val>;

pub(super) struct MvMemory {
    shards: Box<[Mutex<HashMap<Loc, Versions>>]>,
    /// What each transaction last published, so a re-execution can replace it.
    written: Box<[Mutex<Vec<Loc>>]>,
}

impl MvMemory {
    pub(super) fn new(txs: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            written: (0..txs).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, loc: &Loc) -> &Mutex<HashMap<Loc, Versions>> {
        let byte = match loc {
            Loc::Basic(address) => address[19],
            Loc::Storage(address, slot) => address[19] ^ slot.byte(0),
        };
        &self.shards[usize::from(byte)]
    }

    /// The latest value written at `loc` by a transaction before `tx`.
    pub(super) fn read(&self, loc: &Loc, tx: usize) -> Option<Val> {
        let shard = self.shard(loc).lock();
        let (_, val) = shard.get(loc)?.range(..tx).next_back()?;
        Some(val.clone())
    }

    /// Replaces whatever `tx` published before with `writes`.
    pub(super) fn publish(&self, tx: usize, writes: Vec<(Loc, Val)>) {
        let mut written = self.written[tx].lock();
        for loc in written.drain(..) {
            let mut shard = self.shard(&loc).lock();
            if let Some(versions) = shard.get_mut(&loc) {
                versions.remove(&tx);
            }
        }
        for (loc, val) in writes {
            self.shard(&loc)
                .lock()
                .entry(loc)
                .or_default()
                .insert(tx, val);
            written.push(loc);
        }
    }
}

/// What a transaction's resulting state means for later transactions: the accounts it touched
/// (as revm's `State` will see them after commit: self-destructed or empty touched accounts no
/// longer exist) and the storage slots it changed. `skip` (the beneficiary) is never published:
/// reads of it always go through the committing thread.
pub(super) fn writes_of(state: &EvmState, skip: Address) -> Vec<(Loc, Val)> {
    let mut writes = Vec::new();
    for (address, account) in state {
        if *address == skip || !account.is_touched() {
            continue;
        }
        let gone = account.is_selfdestructed() || (account.is_empty() && !account.is_created());
        let info = (!gone).then(|| account.info.clone());
        writes.push((Loc::Basic(*address), Val::Basic(info)));
        for (slot, value) in account.changed_storage_slots() {
            writes.push((
                Loc::Storage(*address, *slot),
                Val::Storage(value.present_value),
            ));
        }
    }
    writes
}
