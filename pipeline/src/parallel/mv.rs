//! Multi-version memory: the writes of transactions executed speculatively, per location and per
//! transaction index, so that a later transaction reads the latest earlier write instead of the
//! block's starting state.
//!
//! Entries are hints, not truth: the committing thread validates every read against the state the
//! block has actually reached, so a stale or missing entry costs a re-execution, never a wrong
//! result. That is why there are no ESTIMATE markers or incarnation numbers here yet.

use alloy_primitives::{
    Address, U256,
    map::{Entry, HashMap},
};
use parking_lot::Mutex;
use revm::state::{AccountInfo, EvmState};

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

/// Shards keyed by one byte of the location, so threads writing different accounts rarely
/// contend on one lock.
const SHARDS: usize = 256;

/// The writes at one location, by transaction index. Nearly every location is written by one
/// transaction of a block, so that case needs no allocation beyond the map entry.
#[derive(Debug)]
enum Versions {
    One(usize, Val),
    /// Sorted by transaction index.
    Many(Vec<(usize, Val)>),
}

impl Versions {
    /// The write of the latest transaction before `tx`.
    fn before(&self, tx: usize) -> Option<&Val> {
        match self {
            Self::One(writer, val) => (*writer < tx).then_some(val),
            Self::Many(versions) => versions
                .iter()
                .rev()
                .find(|(writer, _)| *writer < tx)
                .map(|(_, val)| val),
        }
    }

    fn insert(&mut self, tx: usize, val: Val) {
        match self {
            Self::One(writer, old) if *writer == tx => *old = val,
            Self::One(..) => {
                let Self::One(writer, old) = std::mem::replace(self, Self::Many(Vec::new())) else {
                    unreachable!("matched One")
                };
                let mut versions = vec![(writer, old)];
                let at = versions.partition_point(|(w, _)| *w < tx);
                versions.insert(at, (tx, val));
                *self = Self::Many(versions);
            }
            Self::Many(versions) => match versions.binary_search_by_key(&tx, |(w, _)| *w) {
                Ok(at) => versions[at].1 = val,
                Err(at) => versions.insert(at, (tx, val)),
            },
        }
    }

    /// Removes `tx`'s write; `true` if nothing is left.
    fn remove(&mut self, tx: usize) -> bool {
        match self {
            Self::One(writer, _) => *writer == tx,
            Self::Many(versions) => {
                versions.retain(|(w, _)| *w != tx);
                versions.is_empty()
            }
        }
    }
}

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
        self.shard(loc).lock().get(loc)?.before(tx).cloned()
    }

    /// Replaces whatever `tx` published before with `writes`.
    pub(super) fn publish(&self, tx: usize, writes: Vec<(Loc, Val)>) {
        let mut written = self.written[tx].lock();
        for loc in written.drain(..) {
            let mut shard = self.shard(&loc).lock();
            if shard.get_mut(&loc).is_some_and(|v| v.remove(tx)) {
                shard.remove(&loc);
            }
        }
        written.reserve(writes.len());
        for (loc, val) in writes {
            match self.shard(&loc).lock().entry(loc) {
                Entry::Occupied(mut versions) => versions.get_mut().insert(tx, val),
                Entry::Vacant(slot) => {
                    slot.insert(Versions::One(tx, val));
                }
            }
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
