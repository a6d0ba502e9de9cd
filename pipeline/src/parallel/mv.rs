//! Multi-version memory (Block-STM's `MVMemory`): the writes of the latest execution of every
//! transaction, per location and per transaction index, so that a transaction reads the latest
//! earlier write instead of the block's starting state.
//!
//! An aborted execution's writes become [`Write::Estimate`]s: a reader waits for that transaction
//! instead of reading a value that is probably about to change. Validation compares values, not
//! versions, so a re-execution that writes the same value does not invalidate its readers. Once
//! every transaction is executed and validated, the last write of each location is the block's
//! final value there ([`MvMemory::final_value`]).
//!
//! Transaction fees are not writes at the beneficiary's account: each transaction's fee stays in
//! its own slot beside the list of what it wrote, and only reads of the beneficiary (rare) sum
//! them. Publishing every fee to one location made that location's versions the hottest memory
//! of the block, a list as long as the block searched on every publish, its cache line moving
//! between the threads on every transaction.

use super::scheduler::Padded;
use alloy_primitives::{Address, B256, U256, map::DefaultHashBuilder};
use indexmap::{IndexMap, map::Entry};
use kestrel_types::{AccountInfo, state::KECCAK_EMPTY};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A location a transaction can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Loc {
    /// Nonce, balance and code hash of an account.
    Basic(Address),
    Storage(Address, U256),
}

/// A value at a [`Loc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Val {
    /// `None`: the account does not exist (self-destructed or cleared as empty).
    Basic(Option<AccountInfo>),
    Storage(U256),
}

/// What one transaction wrote at a location.
#[derive(Debug, Clone, Copy)]
pub(super) enum Write {
    Val(Val),
    /// A plain value transfer's credit to an account without code (Block-STM's delta writes,
    /// pevm's lazy balance updates): the balance grows by `value`, nonce and code hash stay what
    /// the transfer read (an account that did not exist now does, with nonce 0 and no code).
    /// Transfers to one hot account then do not conflict with each other.
    Credit {
        value: U256,
        nonce: u64,
        code_hash: B256,
    },
    /// The write of an aborted execution: readers wait for its re-execution.
    Estimate,
}

/// What a read of a [`Loc`] before some transaction finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    /// No earlier transaction wrote there: the value before the block's transactions.
    Base,
    Val(Val),
    /// Only credits since the block's start: the account before the transactions plus this.
    BaseCredited(U256),
    /// An aborted transaction wrote there; its re-execution decides.
    Estimate(usize),
    /// The credits overflow the balance: left to the sequential executor, which fails them as
    /// revm does.
    Overflow,
}

/// What a plain transfer's read of its recipient finds: only existence, nonce and code matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CreditFound {
    Base,
    /// A full write (`None`: the account does not exist).
    Val(Option<AccountInfo>),
    /// An earlier credit: the account exists with this nonce and code hash.
    Credited(u64, B256),
    Estimate(usize),
}

/// Shards keyed by one byte of the location, so threads writing different accounts rarely
/// contend on one lock.
pub(super) const SHARDS: usize = 256;

/// Versions checked one by one from the end before a binary search ([`Versions::before`]).
const NEAR_END: usize = 4;

/// The writes at one location, by transaction index. Nearly every location is written by one
/// transaction of a block, so that case needs no allocation beyond the map entry.
#[derive(Debug)]
enum Versions {
    One((usize, Write)),
    /// Sorted by transaction index.
    Many(Vec<(usize, Write)>),
}

impl Versions {
    /// The writes before `tx`, latest first.
    fn before(&self, tx: usize) -> impl Iterator<Item = (usize, &Write)> {
        let versions: &[(usize, Write)] = match self {
            Self::One(pair) => std::slice::from_ref(pair),
            Self::Many(versions) => versions,
        };
        // Transactions run and are validated close to block order, so a reader comes after
        // all or nearly all writers: the last few versions are checked first, because a binary
        // search over a hot location's hundred versions (88 bytes apart) missed the cache at
        // every step.
        let near_end = versions.len().saturating_sub(NEAR_END);
        let end = match versions[near_end..].iter().rposition(|(w, _)| *w < tx) {
            Some(at) => near_end + at + 1,
            None => versions[..near_end].partition_point(|(w, _)| *w < tx),
        };
        versions[..end].iter().rev().map(|(w, v)| (*w, v))
    }

    /// Inserts or replaces `tx`'s write; `true` if `tx` had none here.
    fn insert(&mut self, tx: usize, write: Write) -> bool {
        match self {
            Self::One((writer, old)) if *writer == tx => {
                *old = write;
                false
            }
            Self::One(pair) => {
                let mut versions = Vec::with_capacity(4);
                versions.push(*pair);
                let at = versions.partition_point(|(w, _)| *w < tx);
                versions.insert(at, (tx, write));
                *self = Self::Many(versions);
                true
            }
            // A first execution in block order comes after every earlier writer.
            Self::Many(versions) if versions.last().is_some_and(|(last, _)| *last < tx) => {
                versions.push((tx, write));
                true
            }
            Self::Many(versions) => match versions.binary_search_by_key(&tx, |(w, _)| *w) {
                Ok(at) => {
                    versions[at].1 = write;
                    false
                }
                Err(at) => {
                    versions.insert(at, (tx, write));
                    true
                }
            },
        }
    }

    fn get_mut(&mut self, tx: usize) -> Option<&mut Write> {
        match self {
            Self::One((writer, write)) => (*writer == tx).then_some(write),
            Self::Many(versions) => versions
                .binary_search_by_key(&tx, |(w, _)| *w)
                .ok()
                .map(|at| &mut versions[at].1),
        }
    }

    /// Removes `tx`'s write; `true` if nothing is left.
    fn remove(&mut self, tx: usize) -> bool {
        match self {
            Self::One((writer, _)) => *writer == tx,
            Self::Many(versions) => {
                versions.retain(|(w, _)| *w != tx);
                versions.is_empty()
            }
        }
    }
}

/// A location's writes, and its value before the block's transactions if one of its writers
/// read that: the finish then need not read the starting state again to tell whether the
/// location changed (a random read of the state for every location written).
#[derive(Debug)]
struct LocWrites {
    versions: Versions,
    base: Option<Val>,
}

/// Follows the writes before some transaction, latest first, to the value they make.
fn resolve<'a>(mut writes: impl Iterator<Item = (usize, &'a Write)>) -> Found {
    let mut credit = U256::ZERO;
    for (writer, write) in writes.by_ref() {
        match write {
            Write::Estimate => return Found::Estimate(writer),
            Write::Credit { value, .. } => match credit.checked_add(*value) {
                Some(sum) => credit = sum,
                None => return Found::Overflow,
            },
            Write::Val(val) if credit.is_zero() => return Found::Val(*val),
            Write::Val(Val::Basic(info)) => {
                return match credited(*info, credit) {
                    Some(info) => Found::Val(Val::Basic(info)),
                    None => Found::Overflow,
                };
            }
            Write::Val(Val::Storage(_)) => unreachable!("credits are written to accounts only"),
        }
    }
    if credit.is_zero() {
        Found::Base
    } else {
        Found::BaseCredited(credit)
    }
}

/// `info` after credits of `credit` in total; `None` if the balance overflows.
pub(super) fn credited(info: Option<AccountInfo>, credit: U256) -> Option<Option<AccountInfo>> {
    let mut info = info.unwrap_or(AccountInfo {
        nonce: 0,
        balance: U256::ZERO,
        code_hash: KECCAK_EMPTY,
    });
    info.balance = info.balance.checked_add(credit)?;
    Some(Some(info))
}

/// The locations written, in one dense vector (an index table beside it): a block's worth of
/// entries in a hash table's sparse buckets spread over three times the memory, every publish
/// and every final read a cache miss on a page faulted in for the block.
type Shard = Padded<Mutex<IndexMap<Loc, LocWrites, DefaultHashBuilder>>>;

/// A transaction's fee to the beneficiary, in its [`TxWrites`].
#[derive(Debug, Clone, Copy, Default)]
enum Fee {
    /// Not executed yet, failed, or it wrote the beneficiary's account itself (fee included).
    #[default]
    None,
    Credit(U256),
    /// Its execution was aborted: readers wait for the re-execution.
    Estimate,
}

/// What a transaction's latest execution wrote.
#[derive(Debug, Default)]
struct TxWrites {
    /// So a re-execution can replace the writes and an abort can turn them into estimates.
    locs: Vec<Loc>,
    fee: Fee,
}

pub(super) struct MvMemory {
    shards: Box<[Shard]>,
    /// One bit per hash of the locations written so far (never cleared within the block): a
    /// read of a location whose bit is clear finds no write without taking its shard's lock.
    /// Most reads are of such locations (the token contract every transfer calls, senders,
    /// recipients), and on two threads every lock of a shard the other thread took last moved
    /// the lock's cache line between the cores.
    filter: Box<[AtomicU64]>,
    /// `64 - log2(bits in filter)`.
    filter_shift: u32,
    written: Vec<Padded<Mutex<TxWrites>>>,
    beneficiary: Address,
}

impl MvMemory {
    pub(super) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Padded::default()).collect(),
            filter: Box::default(),
            filter_shift: 0,
            written: Vec::new(),
            beneficiary: Address::ZERO,
        }
    }

    /// Empties the memory for a block of `txs` transactions, keeping its allocations: the
    /// executor reuses one memory for every block, so publishing writes into memory that is
    /// mapped and likely in cache instead of pages faulted in and zeroed for the block.
    pub(super) fn reset(&mut self, txs: usize, beneficiary: Address) {
        // A transfer writes two locations, a token transfer three: sized so that shards rarely
        // grow while threads wait on them.
        let per_shard = (txs * 3).div_ceil(SHARDS);
        for shard in &mut self.shards {
            let shard = shard.0.get_mut();
            shard.clear();
            shard.reserve(per_shard);
        }
        // About ten bits per location written: few false positives, and small enough to stay
        // in cache.
        let filter_bits = (txs * 32).next_power_of_two().clamp(1 << 12, 1 << 22);
        if self.filter.len() == filter_bits / 64 {
            self.filter.iter_mut().for_each(|word| *word.get_mut() = 0);
        } else {
            self.filter = (0..filter_bits / 64).map(|_| AtomicU64::new(0)).collect();
        }
        self.filter_shift = 64 - filter_bits.trailing_zeros();
        self.written.truncate(txs);
        for written in &mut self.written {
            let written = written.0.get_mut();
            written.locs.clear();
            written.fee = Fee::None;
        }
        self.written.resize_with(txs, Padded::default);
        self.beneficiary = beneficiary;
    }

    /// The word and bit of `loc` in the filter.
    fn filter_bit(&self, loc: &Loc) -> (&AtomicU64, u64) {
        let (address, slot) = match loc {
            Loc::Basic(address) => (address, u64::MAX),
            Loc::Storage(address, slot) => (address, slot.as_limbs()[0]),
        };
        let low = u64::from_le_bytes(address.0[12..].try_into().expect("eight bytes"));
        let hash = (low ^ slot.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let bit = (hash >> self.filter_shift) as usize;
        (&self.filter[bit / 64], 1 << (bit % 64))
    }

    /// `false` if no transaction wrote `loc` yet. Set before a write is inserted, and sequentially
    /// consistent, so a read that misses the bit is one that came before the write.
    fn maybe_written(&self, loc: &Loc) -> bool {
        let (word, bit) = self.filter_bit(loc);
        word.load(Ordering::SeqCst) & bit != 0
    }

    fn mark_written(&self, loc: &Loc) {
        let (word, bit) = self.filter_bit(loc);
        // Loaded first: the bit is usually set already, and a load leaves the line shared.
        if word.load(Ordering::SeqCst) & bit == 0 {
            word.fetch_or(bit, Ordering::SeqCst);
        }
    }

    fn shard_index(&self, loc: &Loc) -> usize {
        let byte = match loc {
            Loc::Basic(address) => address[19],
            Loc::Storage(address, slot) => address[19] ^ slot.byte(0),
        };
        usize::from(byte)
    }

    fn shard(&self, loc: &Loc) -> &Shard {
        &self.shards[self.shard_index(loc)]
    }

    /// What a read of `loc` by transaction `tx` finds.
    pub(super) fn read(&self, loc: &Loc, tx: usize) -> Found {
        if *loc == Loc::Basic(self.beneficiary) {
            return self.read_beneficiary(tx);
        }
        if !self.maybe_written(loc) {
            return Found::Base;
        }
        match self.shard(loc).lock().get(loc) {
            Some(writes) => resolve(writes.versions.before(tx)),
            None => Found::Base,
        }
    }

    /// The beneficiary's account before `tx`: its latest write (which includes its writer's
    /// fee) plus the fees of the transactions since.
    fn read_beneficiary(&self, tx: usize) -> Found {
        let loc = Loc::Basic(self.beneficiary);
        // The shard's lock is released before the fee slots' are taken (`publish` holds a
        // transaction's while it takes shards').
        let latest = match self.shard(&loc).lock().get(&loc) {
            Some(writes) => writes
                .versions
                .before(tx)
                .next()
                .map(|(w, write)| (w, *write)),
            None => None,
        };
        let (from, found) = match latest {
            None => (0, Found::Base),
            Some((writer, Write::Estimate)) => return Found::Estimate(writer),
            Some((writer, Write::Val(val))) => (writer + 1, Found::Val(val)),
            Some((_, Write::Credit { .. })) => unreachable!("fees are not written as credits"),
        };
        let mut fees = U256::ZERO;
        for (writer, written) in self.written.iter().enumerate().take(tx).skip(from) {
            match written.lock().fee {
                Fee::None => {}
                Fee::Credit(fee) => match fees.checked_add(fee) {
                    Some(sum) => fees = sum,
                    None => return Found::Overflow,
                },
                Fee::Estimate => return Found::Estimate(writer),
            }
        }
        match found {
            _ if fees.is_zero() => found,
            Found::Val(Val::Basic(info)) => match credited(info, fees) {
                Some(info) => Found::Val(Val::Basic(info)),
                None => Found::Overflow,
            },
            Found::Base => Found::BaseCredited(fees),
            found => unreachable!("beneficiary read {found:?}"),
        }
    }

    /// What a plain transfer `tx` finds at its recipient's account.
    pub(super) fn read_credit(&self, address: Address, tx: usize) -> CreditFound {
        let loc = Loc::Basic(address);
        if !self.maybe_written(&loc) {
            return CreditFound::Base;
        }
        let shard = self.shard(&loc).lock();
        let Some((writer, write)) = shard.get(&loc).and_then(|w| w.versions.before(tx).next())
        else {
            return CreditFound::Base;
        };
        match *write {
            Write::Estimate => CreditFound::Estimate(writer),
            Write::Credit {
                nonce, code_hash, ..
            } => CreditFound::Credited(nonce, code_hash),
            Write::Val(Val::Basic(info)) => CreditFound::Val(info),
            Write::Val(Val::Storage(_)) => unreachable!("account locations hold account values"),
        }
    }

    /// The value the block's transactions leave at `loc` (`Found::Base` if none wrote there).
    /// Only once every transaction is executed and validated.
    pub(super) fn final_value(&self, loc: &Loc) -> Found {
        self.read(loc, usize::MAX)
    }

    /// Replaces what `tx` wrote before with `writes` (drained) and its `fee` to the beneficiary;
    /// `bases` are the values it read from the starting state. `true` if it wrote a location (or
    /// a fee) its previous execution did not: transactions after it may have read past it, so
    /// all of them must be validated again (Block-STM's `wrote_new_location`).
    pub(super) fn publish(
        &self,
        tx: usize,
        writes: &mut Vec<(Loc, Write)>,
        fee: Option<U256>,
        bases: &[(Loc, Val)],
    ) -> bool {
        let base_of = |loc: &Loc| bases.iter().find(|(l, _)| l == loc).map(|(_, val)| *val);
        let mut written = self.written[tx].lock();
        let mut new_location = fee.is_some() && matches!(written.fee, Fee::None);
        written.fee = fee.map_or(Fee::None, Fee::Credit);
        for (loc, write) in writes.iter() {
            self.mark_written(loc);
            let fresh = match self.shard(loc).lock().entry(*loc) {
                Entry::Occupied(mut entry) => {
                    let writes = entry.get_mut();
                    if writes.base.is_none() {
                        writes.base = base_of(loc);
                    }
                    writes.versions.insert(tx, *write)
                }
                Entry::Vacant(entry) => {
                    entry.insert(LocWrites {
                        versions: Versions::One((tx, *write)),
                        base: base_of(loc),
                    });
                    true
                }
            };
            new_location |= fresh;
        }
        // What the previous execution wrote and this one did not.
        for loc in &written.locs {
            if writes.iter().any(|(l, _)| l == loc) {
                continue;
            }
            let mut shard = self.shard(loc).lock();
            if shard.get_mut(loc).is_some_and(|w| w.versions.remove(tx)) {
                shard.swap_remove(loc);
            }
        }
        written.locs.clear();
        written.locs.extend(writes.drain(..).map(|(loc, _)| loc));
        new_location
    }

    /// Turns `tx`'s writes into estimates (its execution was aborted).
    pub(super) fn mark_estimates(&self, tx: usize) {
        let mut written = self.written[tx].lock();
        if let Fee::Credit(_) = written.fee {
            written.fee = Fee::Estimate;
        }
        for loc in &written.locs {
            if let Some(write) = self
                .shard(loc)
                .lock()
                .get_mut(loc)
                .and_then(|w| w.versions.get_mut(tx))
            {
                *write = Write::Estimate;
            }
        }
    }

    /// Calls `f` with every location written (or credited), its final value and, if known, its
    /// value before the block's transactions, for the shards in `shards`.
    pub(super) fn for_each_final(
        &self,
        shards: std::ops::Range<usize>,
        mut f: impl FnMut(&Loc, Found, Option<Val>),
    ) {
        let beneficiary = Loc::Basic(self.beneficiary);
        let ours = shards.contains(&self.shard_index(&beneficiary));
        for shard in &self.shards[shards] {
            for (loc, writes) in shard.lock().iter() {
                if *loc != beneficiary {
                    f(
                        loc,
                        resolve(writes.versions.before(usize::MAX)),
                        writes.base,
                    );
                }
            }
        }
        if ours {
            match self.final_value(&beneficiary) {
                Found::Base => {}
                found => f(&beneficiary, found, None),
            }
        }
    }
}
